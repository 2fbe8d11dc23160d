"""KFP wrapper of ingest: maps artifacts to `radflow.components.ingest.ingest.ingest` arguments."""

from kfp.dsl import Dataset, Output


def ingest(source: str, config: dict, examples: Output[Dataset]):
    """Decodes, standardises, deduplicates and patient-splits the images under `source`.

    Args:
        source: folder or gs:// prefix in Kaggle or class-per-folder layout, or a CSV manifest.
        config: IngestConfig fields (see radflow.components.ingest.ingest.IngestConfig).
        examples: TFRecord shards per split, manifest.csv and metadata.json.
    """
    from radflow.components.ingest.ingest import IngestConfig
    from radflow.components.ingest.ingest import ingest as run_ingest
    from radflow.pipeline.config import from_dict

    result = run_ingest(source, examples.path, from_dict(IngestConfig, config))
    examples.metadata.update({"label_names": list(result.metadata.label_names), "counts": result.metadata.counts,
                              "states": result.states, "image_size": result.metadata.image_size,
                              "resize_policy": result.metadata.resize_policy, "layout": result.metadata.layout,
                              "input_fingerprint": result.metadata.input_fingerprint})
