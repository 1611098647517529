"""The paper's published numbers (Zhao, Zhang & Hu, ICML 2022), to print beside ours (`table --paper`).

Keyed by the network as gnp.models names the official code's, the dataset and augmentation as the rows
name them, and the table scheme. Values: test error in % (mean, std over seeds; top-1 then top-5 for
ImageNet). Table 4 is ImageNet (3 seeds); Table 1 is CIFAR (5 seeds), of which only the WRN-28-10 row
(means) is transcribed here: the other rows are shown as missing rather than guessed. Tables 2 (CIFAR-10)
and 3 (CIFAR-100), ViT-Ti and ViT-S from scratch with basic and heavy augmentation, are not transcribed:
TABLES2_3 names their rows and every cell is shown as missing.
"""

import math

SOURCE = "Zhao, Zhang & Hu, ICML 2022"

# Table 4: ImageNet top-1 / top-5 error, mean ± std over 3 seeds
TABLE4 = {
    "VGG16BN": {"Standard": (26.89, 0.12, 8.88, 0.06), "SAM": (26.41, 0.13, 8.60, 0.05),
                "GNP": (26.12, 0.16, 8.44, 0.06)},
    "ResNet50": {"Standard": (23.64, 0.17, 7.01, 0.09), "SAM": (23.16, 0.11, 6.72, 0.06),
                 "GNP": (22.87, 0.15, 6.59, 0.11)},
    "ResNet101": {"Standard": (21.97, 0.09, 6.11, 0.07), "SAM": (21.02, 0.10, 5.31, 0.09),
                  "GNP": (20.53, 0.13, 5.18, 0.08)},
}

# Table 1: CIFAR top-1 error, mean over 5 seeds (dataset, augmentation) per scheme
TABLE1 = {
    "WideResNet_28_10": {
        "Standard": {("cifar10", "basic"): 3.53, ("cifar10", "cutout"): 2.81, ("cifar100", "basic"): 18.99,
                     ("cifar100", "cutout"): 16.92},
        "SAM": {("cifar10", "basic"): 2.78, ("cifar10", "cutout"): 2.43, ("cifar100", "basic"): 16.53,
                ("cifar100", "cutout"): 14.87},
        "GNP": {("cifar10", "basic"): 2.52, ("cifar10", "cutout"): 2.16, ("cifar100", "basic"): 16.02,
                ("cifar100", "cutout"): 14.28},
    },
}

# Tables 2 and 3: ViT on CIFAR-10 and CIFAR-100, top-1 error over 5 seeds, keyed as TABLE1; not transcribed
TABLES2_3 = {model: {"Standard": {}, "SAM": {}, "GNP": {}} for model in ("ViT_TI16", "ViT_S16")}
CIFAR = {**TABLE1, **TABLES2_3}  # the tables name different networks

# The tables as the paper lays them out: the networks of their rows (`complete`: every row the table has;
# Table 1's other rows are not transcribed, so not known here), their columns (dataset, augmentation as the
# rows name them), the errors they report, and the seeds behind each cell. Each network's rows: SCHEMES.
SCHEMES = ("Standard", "SAM", "GNP")
LAYOUTS = {
    "Table 1": dict(title="CNNs on CIFAR-10 and CIFAR-100", models=tuple(TABLE1), complete=False,
                    columns=(("cifar10", "basic"), ("cifar10", "cutout"), ("cifar100", "basic"),
                             ("cifar100", "cutout")), metrics=("top-1",), seeds=5),
    "Tables 2–3": dict(title="ViT from scratch on CIFAR-10 (Table 2) and CIFAR-100 (Table 3)",
                       models=tuple(TABLES2_3), complete=True,
                       columns=(("cifar10", "basic"), ("cifar10", "heavy"), ("cifar100", "basic"),
                                ("cifar100", "heavy")), metrics=("top-1",), seeds=5),
    "Table 4": dict(title="ImageNet", models=tuple(TABLE4), complete=True,
                    columns=(("imagenet", "inception"),), metrics=("top-1", "top-5"), seeds=3),
}


def paper_errors(model: str, dataset: str, augmentation: str, scheme: str) -> tuple[float, float, float, float]:
    """(top-1 mean, top-1 std, top-5 mean, top-5 std) the paper reports for this cell; NaN where it reports
    none (or it is not transcribed)."""
    nan = math.nan
    if dataset == "imagenet":
        return TABLE4.get(model, {}).get(scheme, (nan,) * 4)
    top1 = CIFAR.get(model, {}).get(scheme, {}).get((dataset, augmentation), nan)
    return top1, nan, nan, nan
