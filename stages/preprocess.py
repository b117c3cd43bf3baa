"""DVC stage preprocess: data/raw -> data/processed/dataset.pt (uint8 N x 3 x S x S, labels, ids, split)
and data/processed/split.csv (id, label, split)."""

import _path  # noqa: F401

import pandas as pd

from pipeline.cli import stage_main
from pipeline.io import write_text
from pipeline.preprocess import build_dataset, save_dataset


def run(params):
    ds = build_dataset("data/raw", params["preprocess.size"], params["split.test_per_class"], params["split.seed"])
    save_dataset(ds, "data/processed/dataset.pt")
    split = pd.DataFrame({"id": ds["ids"], "label": [ds["classes"][y] for y in ds["labels"].tolist()],
                          "split": ["test" if t else "train" for t in ds["is_test"].tolist()]})
    write_text("data/processed/split.csv", split.to_csv(index=False))
    n_test = int(ds["is_test"].sum())
    print(f"preprocess: {len(ds['ids'])} images of {tuple(ds['images'].shape[1:])} in {len(ds['classes'])} labels "
          f"{ds['classes']}; train {len(ds['ids']) - n_test}, test {n_test}")


if __name__ == "__main__":
    stage_main(run)
