import subprocess
import sys

# GPU boxes may have only torch + transformers: the model, scorer and trainer, and the local
# backend, must import without the web, database and LLM-client stacks, and without peft
# (LoRA only). Importing a blocked package fails; only looking it up
# (importlib.util.find_spec, as `datasets` does for sqlalchemy when transformers' Trainer
# imports it) does not raise, as on a box where it is absent. peft is made absent outright
# (sys.modules["peft"] = None: find_spec finds nothing and import fails), since
# transformers imports it whenever find_spec finds it.
_CHECK = """
import importlib.abc, importlib.machinery, sys
BLOCKED = {"pydantic", "fastapi", "sqlalchemy", "litellm", "httpx", "uvicorn", "aiosqlite"}
class Blocked(importlib.abc.Loader):
    def create_module(self, spec):
        raise ImportError(f"blocked: {spec.name}")
    def exec_module(self, module):
        raise ImportError(f"blocked: {module.__name__}")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return importlib.machinery.ModuleSpec(name, Blocked())
        return None
sys.meta_path.insert(0, Block())
sys.modules["peft"] = None
import qlass.qnet, qlass.qnet.model, qlass.qnet.scorer, qlass.qnet.train, qlass.qnet.constant
import qlass.backends.hf
print("ok")
"""


def test_model_scorer_train_and_local_backend_import_without_web_db_llm_stacks_or_peft() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _CHECK], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"
