"""Who may do what on which Kafka resource: deny by default, deny wins, fail closed.

model     the rules as data          loader    YAML files → validated PolicySet
engine    compiled decisions         snapshot  the PolicySet in shared memory, per-worker caches
"""

from gateway.policy.engine import Decision, Engine, PrincipalView, explain, explain_main
from gateway.policy.loader import check_main, load_policies
from gateway.policy.model import PolicyError, PolicySet, ResourcePattern, Rule
from gateway.policy.snapshot import PolicyCache, PolicyStore, ViewHolder

__all__ = [
    "Decision", "Engine", "PolicyCache", "PolicyError", "PolicySet", "PolicyStore", "PrincipalView",
    "ResourcePattern", "Rule", "ViewHolder", "check_main", "explain", "explain_main", "load_policies",
]
