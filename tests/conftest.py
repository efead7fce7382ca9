import os
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

# The checkout under test comes first, in this process and in every subprocess a test starts,
# whatever dave_lightning is installed (a second checkout's editable install, say).
sys.path[:0] = [str(ROOT), str(TESTS)]
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT), str(TESTS), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
)


def pytest_sessionstart(session: pytest.Session) -> None:
    import dave_lightning

    imported = Path(dave_lightning.__file__).resolve().parent
    if imported != ROOT / "dave_lightning":
        raise pytest.UsageError(
            f"the tests import dave_lightning from {imported}, not from the checkout under "
            f"test ({ROOT}); run pytest from the checkout"
        )


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
