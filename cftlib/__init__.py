"""cftlib: Concept-Guided Fine-Tuning (Elisha, Barkan, Koenigstein, CVPR 2026), reproducible.

Packages in layers; each imports only layers below it (the `layers` contract in pyproject.toml, checked by
`lint-imports` in CI and by tests/test_layers.py):

    8  stages      ground · finetune · evaluate · benchmarks · ablations · preflight · nbrun   (what DVC runs)
    7  report      tables · claims · paper · figures · headline                               (what a reader sees)
    6  training    losses · baselines · pretrain · dfr · runspec · trainer  |  metrics  accuracy · alignment ·
                   intervals  |  validation (concept occurrence and coverage)
    5  grounding   concept masks: world parts, GroundingDINO + SAM, foreground
    4  concepts    proposers (field guide, LLM, WordNet, bank) and the concept bank
    3  relevance   differentiable relevance maps: attnlrp · gradients · rollout
    2  models      factory · zoo · checkpoints
    1  data        world · augment · datasets · fewshot · maskstore                           (data and formats)
    0  core        config · io · paths · progress · launch · hub
"""

__version__ = "0.1.0"
