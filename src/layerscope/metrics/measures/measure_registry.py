"""The one list of similarity measures: ``--measure`` names, the README's table, the page and the tests
read it (each measure's invariances, paper, whether ``calibrated`` applies)."""
from __future__ import annotations

from .base import INVARIANCES, Measure
from .cka import CKA
from .neighbours import CKNNA, MutualKNN
from .rsa import RSA
from .subspace import PWCCA, SVCCA, Procrustes

MEASURES: dict[str, Measure] = {m.name: m for m in (CKA(), Procrustes(), SVCCA(), PWCCA(), RSA(), MutualKNN(),
                                                    CKNNA())}
DEFAULT = "cka"


def resolve(names: list[str] | tuple[str, ...] | str) -> list[Measure]:
    """The measures of ``--measure`` (names, or ``all``), in the registry's order.

    Raises:
        ValueError: an unknown name.
    """
    names = [names] if isinstance(names, str) else list(names)
    if "all" in names:
        return list(MEASURES.values())
    unknown = [n for n in names if n not in MEASURES]
    if unknown:
        raise ValueError(f"--measure {unknown[0]}: expected some of {', '.join(MEASURES)} or all")
    return [m for name, m in MEASURES.items() if name in names]


def invariance_table() -> list[dict[str, str]]:
    """One row per measure: name, title, one column per invariance (yes/no), calibrated, paper."""
    return [{"measure": m.name, "title": m.title,
             **{inv: "yes" if inv in m.invariances else "no" for inv in INVARIANCES},
             "calibrated": "yes" if m.bounded else "no", "symmetric": "yes" if m.symmetric else "no",
             "paper": m.paper} for m in MEASURES.values()]
