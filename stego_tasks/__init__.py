"""STEGO as a library: the pipeline's stages over four layers that call one way (down).

Layers, lowest first (`tests/test_contracts.py` checks the direction):
  config, params_schema, params_doc, paths, presets/   configuration: params blocks and
             their JSON schema, the published defaults (presets/defaults.yaml) and the
             presets as overrides of them, artifact paths
  runtime/   where work runs and how it is written: atomic outputs, locks, progress,
             devices, executors (spawn pool / Dask), the stage trace and provenance
  method/    STEGO's method, arrays in and out: backbone, head, loss, neighbours, inference,
             dense CRF, metrics, probes, the trained model's files
  data/      images and corpus files, preprocessing, the manifest, the Zarr features store,
             the train split as training reads it, benchmark adapters
  tools/     commands on a finished run: predict, sweep-k, seeds, report pieces
Stages, one module each (same name as the flow, params block, DVC stage and test file):
  demo_data, ingest, validate, extract, knn, train, cluster, crf, evaluate, report
Public API kept at its first import paths: `stego_tasks.loss.correspondence_loss`,
`stego_tasks.metrics.unsupervised_scores`, `stego_tasks.backbone.create_backbone` / `normalize`.
"""

__version__ = "0.1.0"
