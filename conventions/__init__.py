"""The ground floor: conventions every package shares and nothing of the project beneath them.

pose/action/camera (`camera`), depth (`depth`), the range of every user number (`limits`), errors
(`errors`), metrics (`metrics`), file writes (`atomic`) and progress bars (`progress`). Each module
imports only the standard library, torch/numpy/tqdm, and other modules of this package
(docs/architecture.md §Packages and what each may import).
"""
