"""Knowledge distillation: a smaller student trained on the model under study (the teacher).

- ``config``: the schema (light, no torch import).
- ``losses``: the divergences of the literature as pure functions on log-probabilities.
- ``student``: build the student (a subset of the teacher's layers, optionally narrowed) or load one.
- ``cache``: teacher top-k logits and teacher-generated sequences, stored as safetensors.
- ``technique``: the LightningModule and the ``Distill`` technique.
"""
