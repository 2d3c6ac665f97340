"""Instruction prompts and one in-context example per environment family.

The system prompts explain the setting, list the action templates and ask for the
``Thought: ... Action: ...`` format that :mod:`qlass.parsing` reads. The TextWorldExpress
and ScienceWorld examples replay the simulators' gold paths of real tasks (checked by
``tests/envs/test_prompts.py``); the WebShop and ALFWorld examples are written by hand in
those simulators' formats, since their data cannot be bundled. Thoughts in the examples
are written by hand; the gold actions and observations are the simulators'.
"""

from __future__ import annotations

from dataclasses import dataclass

from qlass.chat import OBSERVATION_PREFIX
from qlass.envs.base import EnvPrompt
from qlass.errors import UnknownNameError

__all__ = ["EXAMPLE_EPISODES", "ExampleEpisode", "prompt_for", "render_example"]

_FORMAT = (
    "Reply with exactly one action on a line starting with 'Action:', optionally after a "
    "short thought:\n"
    "Thought: <your reasoning about what to do next>\n"
    "Action: <one action>"
)


@dataclass(frozen=True, slots=True)
class ExampleEpisode:
    """An example episode: task, first observation and (thought, action, observation) turns.

    ``task_key`` names the simulator task whose gold path it shows (empty: hand-written).
    """

    instruction: str
    observation: str
    turns: tuple[tuple[str, str, str], ...]
    task_key: str = ""

    @property
    def actions(self) -> list[str]:
        return [action for _, action, _ in self.turns]


def render_example(example: ExampleEpisode) -> str:
    """Render an example as the conversation the policy sees (same prefixes)."""
    lines = [example.instruction, OBSERVATION_PREFIX + example.observation]
    for thought, action, observation in example.turns:
        lines.append(f"Thought: {thought}\nAction: {action}")
        lines.append(OBSERVATION_PREFIX + observation)
    return "\n".join(lines)


_TWX_SYSTEM = f"""You are an agent in a text-based game. Each turn you read an observation and \
choose one action. The task is given at the start.
Useful actions (replace <...> with names from the observations):
- look around, inventory, task
- move <north|south|east|west>
- open <container or door>, close <container or door>
- take <object>, put <object> in <container>, put <object> on <surface>
- read <object>, examine <object>
- cook <ingredient> in <appliance>, slice|chop|dice <ingredient>, prepare meal, eat <meal>
Use only objects you have seen. The episode ends when the task is done or failed.
{_FORMAT}"""

_SCIWORLD_SYSTEM = f"""You are an agent doing a science experiment in a simulated world with \
rooms such as the kitchen, bathroom, workshop, art studio, greenhouse, outside, hallway, \
living room, bedroom and foundry. Doors and containers are already open and you may \
teleport to any room in one step.
Actions (OBJ and LOC are names from the observations):
- look around; look at OBJ; look in OBJ; read OBJ; inventory; task
- open OBJ; close OBJ; activate OBJ; deactivate OBJ
- connect OBJ to OBJ; disconnect OBJ
- pick up OBJ; put down OBJ; move OBJ to OBJ; pour OBJ in OBJ; dunk OBJ in OBJ; mix OBJ
- use OBJ on OBJ; eat OBJ; flush OBJ
- go to LOC; teleport to LOC
- focus on OBJ (signals the object of the task; focusing on a wrong object fails the task)
- wait (10 steps), wait1 (1 step)
If the simulator asks which of several objects you meant, answer with the number.
{_FORMAT}"""

_WEBSHOP_SYSTEM = f"""You are shopping on a web store to buy the product an instruction \
describes. Each observation is the page text, with [SEP] between elements.
Actions:
- search[<keywords>] when the page has a search bar
- click[<button>] on one of the clickable elements of the page: a product id, an option \
(size, colour, ...), "< Prev", "Next >", "Back to Search", "Description", "Buy Now"
Choose the options the instruction asks for before clicking "Buy Now"; buying ends the \
episode and the reward says how well the product matches.
{_FORMAT}"""

_ALFWORLD_SYSTEM = f"""You are an agent in a household. Each turn you read an observation \
and choose one action to complete the task.
Actions (objects and receptacles are named with a number, e.g. "mug 1", "cabinet 2"):
- go to <receptacle>; open <receptacle>; close <receptacle>
- take <object> from <receptacle>; put <object> in/on <receptacle>
- clean <object> with <receptacle>; heat <object> with <receptacle>; \
cool <object> with <receptacle>; use <lamp>
- look; inventory; examine <object or receptacle>
{_FORMAT}"""

EXAMPLE_EPISODES: dict[str, ExampleEpisode] = {
    # Gold path of textworld_express/coin[numLocations=3,includeDoors=0]/train/0.
    "textworld_express": ExampleEpisode(
        task_key="textworld_express/coin[numLocations=3,includeDoors=0]/train/0",
        instruction="Your task is to search the environment and find the coin.  Once you "
        "find the coin, take it.",
        observation="You are in the kitchen. In one part of the room you see a stove. There "
        "is also an oven. You also see a fridge that is closed. In another part of the room "
        "you see a counter, that has nothing on it. In one part of the room you see a kitchen "
        "cupboard that is closed. There is also a cutlery drawer that is closed. You also see "
        "a trash can that is closed. In another part of the room you see a dishwasher that is "
        "closed. In one part of the room you see a dining chair, that has nothing on it. \n"
        "To the East you see the pantry. To the West you see the corridor.",
        turns=(
            (
                "I should look around to see where the coin could be.",
                "look around",
                "You are in the kitchen. In one part of the room you see a stove. There is also "
                "an oven. You also see a fridge that is closed. In another part of the room you "
                "see a counter, that has nothing on it. In one part of the room you see a "
                "kitchen cupboard that is closed. There is also a cutlery drawer that is closed. "
                "You also see a trash can that is closed. In another part of the room you see a "
                "dishwasher that is closed. In one part of the room you see a dining chair, that "
                "has nothing on it. \nTo the East you see the pantry. To the West you see the "
                "corridor.",
            ),
            (
                "No coin in the kitchen. I will try the corridor to the west.",
                "move west",
                "You are in the corridor. In one part of the room you see a key holder, that has "
                "nothing on it. There is also a shoe cabinet that is closed. You also see a "
                "umbrella stand, that has nothing on it. In another part of the room you see a "
                "hat rack, that has nothing on it. In one part of the room you see a coat "
                "hanger, that has nothing on it. \nTo the East you see the kitchen.",
            ),
            (
                "The corridor is a dead end without a coin. I go back east.",
                "move east",
                "You are in the kitchen. In one part of the room you see a stove. There is also "
                "an oven. You also see a fridge that is closed. In another part of the room you "
                "see a counter, that has nothing on it. In one part of the room you see a "
                "kitchen cupboard that is closed. There is also a cutlery drawer that is closed. "
                "You also see a trash can that is closed. In another part of the room you see a "
                "dishwasher that is closed. In one part of the room you see a dining chair, that "
                "has nothing on it. \nTo the East you see the pantry. To the West you see the "
                "corridor.",
            ),
            (
                "The pantry to the east is the only room left.",
                "move east",
                "You are in the pantry. In one part of the room you see a folding chair, that "
                "has nothing on it. There is also a shelf, that has nothing on it. You also see "
                "a coin. \nTo the West you see the kitchen.",
            ),
            ("The coin is here. I take it.", "take coin", "You take the coin."),
        ),
    ),
    # Gold path of scienceworld/lifespan-longest-lived[easy]/train/2.
    "scienceworld": ExampleEpisode(
        task_key="scienceworld/lifespan-longest-lived[easy]/train/2",
        instruction="Your task is to find the animal with the longest life span.  The animals "
        "are in the 'outside' location.  Focus on the animal with the longest life span.",
        observation="This room is called the kitchen. In it, you see: \n\tthe agent\n\ta "
        "substance called air\n\ta chair. On the chair is: nothing.\n\ta counter. On the "
        "counter is: a bowl (containing a red apple, a banana, an orange, a potato), a "
        "drawer.\n\ta cupboard. The cupboard door is closed. \n\ta freezer. The freezer door "
        "is closed. \n\ta fridge. The fridge door is closed. \n\ta glass jar (containing a "
        "substance called sodium chloride)\n\ta lighter\n\ta oven, which is turned off. The "
        "oven door is closed. \n\ta painting\n\ta sink, which is turned off. In the sink is: "
        "nothing.\n\ta substance called soap\n\ta stopwatch, which is deactivated. \n\ta "
        "stove, which is turned off. On the stove is: nothing.\n\ta table. On the table is: a "
        "glass cup (containing nothing).\n\ta thermometer, currently reading a temperature of "
        "10 degrees celsius\nYou also see:\n\tA door to the bathroom (that is open)\n\tA door "
        "to the hallway (that is open)\n\tA door to the outside (that is open)",
        turns=(
            (
                "The animals are outside. The door to the outside is in this room.",
                "open door to outside",
                "The door is already open.",
            ),
            ("The door is open, so I go outside.", "go to outside", "You move to the outside."),
            (
                "Of the animals outside, the giant tortoise lives longest.",
                "focus on egg giant tortoise",
                "You focus on the giant tortoise egg.",
            ),
        ),
    ),
    "webshop": ExampleEpisode(
        instruction="i need a long lasting 6.76 fl oz bottle of l'eau d'issey, and price lower "
        "than 100.00 dollars",
        observation="WebShop [SEP] Instruction: [SEP] i need a long lasting 6.76 fl oz bottle "
        "of l'eau d'issey, and price lower than 100.00 dollars [SEP] Search",
        turns=(
            (
                "I search for the product with its name, size and quality.",
                "search[l'eau d'issey 6.76 fl oz bottle long lasting]",
                "Back to Search [SEP] Page 1 (Total results: 50) [SEP] Next > [SEP] B000VOHH8I "
                "[SEP] L'eau D'issey By Issey Miyake for MenEau De Toilette Spray, 6.7 Fl Oz "
                "Bottle [SEP] $64.98 [SEP] B000MJZOPK [SEP] L'eau d'Issey by Issey Miyake for "
                "Women 3.3 oz Eau de Toilette Spray [SEP] $49.98",
            ),
            (
                "B000VOHH8I is a 6.7 fl oz bottle under 100 dollars.",
                "click[B000VOHH8I]",
                "Back to Search [SEP] < Prev [SEP] size [SEP] 2.5 fl oz [SEP] 6.76 fl oz (pack "
                "of 1) [SEP] L'eau D'issey By Issey Miyake for MenEau De Toilette Spray, 6.7 Fl "
                "Oz Bottle [SEP] Price: $64.98 [SEP] Rating: N.A. [SEP] Description [SEP] "
                "Features [SEP] Reviews [SEP] Buy Now",
            ),
            (
                "I choose the 6.76 fl oz size the instruction asks for.",
                "click[6.76 fl oz (pack of 1)]",
                "You have clicked 6.76 fl oz (pack of 1).",
            ),
            ("The options match; I buy it.", "click[Buy Now]", "Thank you for shopping with us!"),
        ),
    ),
    "alfworld": ExampleEpisode(
        instruction="Your task is to: put a clean spatula in drawer.",
        observation="You are in the middle of a room. Looking quickly around you, you see a "
        "countertop 1, a drawer 1, a drawer 2, a sinkbasin 1, and a stoveburner 1.",
        turns=(
            (
                "A spatula is likely on the countertop.",
                "go to countertop 1",
                "On the countertop 1, you see a knife 1, and a spatula 1.",
            ),
            (
                "I take the spatula.",
                "take spatula 1 from countertop 1",
                "You pick up the spatula 1 from the countertop 1.",
            ),
            (
                "Next I clean it in the sink.",
                "go to sinkbasin 1",
                "On the sinkbasin 1, you see nothing.",
            ),
            (
                "I clean the spatula with the sink basin.",
                "clean spatula 1 with sinkbasin 1",
                "You clean the spatula 1 using the sinkbasin 1.",
            ),
            (
                "Now I put it in a drawer.",
                "go to drawer 1",
                "The drawer 1 is open. In it, you see nothing.",
            ),
            (
                "The drawer is open and empty.",
                "put spatula 1 in/on drawer 1",
                "You put the spatula 1 in/on the drawer 1.",
            ),
        ),
    ),
}

_SYSTEMS = {
    "textworld_express": _TWX_SYSTEM,
    "scienceworld": _SCIWORLD_SYSTEM,
    "webshop": _WEBSHOP_SYSTEM,
    "alfworld": _ALFWORLD_SYSTEM,
}


def prompt_for(family: str) -> EnvPrompt:
    """The instruction prompt and in-context example of an env family."""
    if family not in _SYSTEMS:
        raise UnknownNameError(
            f"no prompt for env {family!r}; choose one of: {', '.join(_SYSTEMS)}"
        )
    return EnvPrompt(system=_SYSTEMS[family], example=render_example(EXAMPLE_EPISODES[family]))
