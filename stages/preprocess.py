"""DVC stage preprocess: data/raw -> data/processed/dataset/ (images.npy: uint8 N x 3 x S x S; index.json: labels,
ids, split),
data/processed/split.csv (id, label, split), data/processed/crops.csv (where each picture was cropped) and
data/processed/rejected.csv (pictures refused here: no face found)."""

import pandas as pd

from pipeline.cli import stage_main
from pipeline.faces import CropSpec
from pipeline.io import write_text
from pipeline.paths import CROPS, DATASET, PREPROCESS_REJECTED, RAW, SPLIT
from pipeline.preprocess import build_dataset

CROP_COLUMNS = ["id", "label", "source", "crop", "left", "top", "right", "bottom"]


def run(params):
    p = params.preprocess
    ds, report = build_dataset(RAW, DATASET, p.size, params.split.test_per_class, params.split.seed,
                               CropSpec.from_params(p))
    split = pd.DataFrame({"id": ds["ids"], "label": [ds["classes"][y] for y in ds["labels"].tolist()],
                          "split": ["test" if t else "train" for t in ds["is_test"].tolist()]})
    write_text(SPLIT, split.to_csv(index=False))
    report = pd.DataFrame(report)
    refused = report[report["crop"] == "rejected"]
    write_text(CROPS, report[report["crop"] != "rejected"][CROP_COLUMNS]
               .astype({c: "int64" for c in CROP_COLUMNS[4:]}).to_csv(index=False))
    write_text(PREPROCESS_REJECTED,
               refused.rename(columns={"source": "path"})[["path", "reason"]].to_csv(index=False))
    n_test = int(ds["is_test"].sum())
    how = report["crop"].value_counts()
    crops = ", ".join(f"{n} {k}" for k, n in sorted(how.items()) if k != "rejected")
    print(f"preprocess: {len(ds['ids'])} images of {tuple(ds['images'].shape[1:])} in {len(ds['classes'])} labels "
          f"{ds['classes']}; train {len(ds['ids']) - n_test}, test {n_test}; crops: {crops}"
          + (f"; refused {len(refused)} with no face (see {PREPROCESS_REJECTED})" if len(refused) else ""))


if __name__ == "__main__":
    stage_main(run)
