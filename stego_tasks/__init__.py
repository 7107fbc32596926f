"""STEGO as a library of pure functions: one module per concern.

Algorithm parts (see README "Architecture"):
  backbone  frozen DINO / DINOv2 ViT through timm, weights resolution
  head      segmentation head, cluster probe, linear probe
  loss      correspondence distillation loss
  knn       faiss top-k neighbours for positive pairs
  crf       dense CRF refinement
  metrics   Hungarian-matched and linear scores
Pipeline stages (one module each, same name as the flow, params block and DVC stage):
  ingest, validate, extract, knn, train, cluster, crf, evaluate
"""

__version__ = "0.1.0"
