"""Pure detection: baselines, rules and incidents (no database, no web framework).

>>> from querywatch.detect import Detector, DetectSettings
>>> Detector(DetectSettings(learning_intervals=3)).learning
True
"""

from querywatch.detect.baseline import (
    Baseline,
    FingerprintBaseline,
    Rates,
    Robust,
    RollingBaseline,
    build_baseline,
)
from querywatch.detect.incidents import (
    Detector,
    IncidentSettings,
    Observation,
    Transition,
    incident_id,
    root_cause_key,
    step,
)
from querywatch.detect.rules import RULES, Context, Rule, detect, make_context
from querywatch.detect.settings import DetectSettings, settings_from_mapping

__all__ = [
    "RULES",
    "Baseline",
    "Context",
    "DetectSettings",
    "Detector",
    "FingerprintBaseline",
    "IncidentSettings",
    "Observation",
    "Rates",
    "Robust",
    "RollingBaseline",
    "Rule",
    "Transition",
    "build_baseline",
    "detect",
    "incident_id",
    "make_context",
    "root_cause_key",
    "settings_from_mapping",
    "step",
]
