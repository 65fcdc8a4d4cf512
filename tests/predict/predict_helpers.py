"""Settings shared by the predict tests."""

#: a tiny model (tests/engine/engine_standins.py TINY) on 48³ crops at 3 mm; 2 epochs on 3 cases
TINY_RUN = ["data.source=manifest", "data.image_size=[48,48,48]", "data.batch_size=2", "data.val_frac=0.34",
            "data.covariates.numeric=[age]", "data.covariates.categorical=[sex]", "model.patch_size=8",
            "model.embed_dim=16", "model.depth=1", "model.num_heads=2", "model.window_size=2", "head.hidden=[16]",
            "head.lung_frac_min=0.0", "train.epochs=2", "optim.warmup_epochs=0", "logging.wandb=false",
            "logging.progress=false", "train.heatmap=false"]
PP_ARGS = ["--size", "48", "--spacing", "3", "--no-volume-check", "--lung-mask", "classical", "--no-qc-png"]
