"""Adapters that put qlass's Q-guided step inside agent frameworks.

    qlass.integrations.callback     CallbackEnv: an Env made of an async step callback
    qlass.integrations.langgraph    a LangGraph node that decides with an Agent
                                    (pip install 'qlass[langgraph]')

Each adapter imports its framework only when it is imported itself.
"""
