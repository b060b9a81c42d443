"""Training: the synthetic scene engine (BOP datasets and on-the-fly samples), losses and training loops.

* :func:`synthesize` writes a synthetic BOP dataset (``meshpose synth``), :class:`SynthConfig` says what.
* :class:`SceneSampler` / :class:`SyntheticStream` draw :class:`SyntheticSample` images on the fly.
* :func:`resolve_objects` turns ``novel:N``, a mesh folder or a BOP dataset into an :class:`ObjectSet`.
"""

from meshpose.train.synth import (
    ObjectSet,
    SceneConfig,
    SceneLayout,
    SceneSampler,
    SynthConfig,
    SyntheticSample,
    SyntheticStream,
    SynthResult,
    clear_caches,
    resolve_objects,
    synthesize,
)

__all__ = [
    "ObjectSet",
    "SceneConfig",
    "SceneLayout",
    "SceneSampler",
    "SynthConfig",
    "SynthResult",
    "SyntheticSample",
    "SyntheticStream",
    "clear_caches",
    "resolve_objects",
    "synthesize",
]
