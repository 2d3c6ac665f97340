"""Adapters that put qlass's Q-guided step inside agent frameworks, on top of
:class:`qlass.agent.Agent` (an env made of a bare callback is :mod:`qlass.envs.callback`).

    qlass.integrations.langgraph    a LangGraph node that decides with an Agent
                                    (pip install 'qlass[langgraph]')

Each adapter imports its framework only when it is imported itself.
"""
