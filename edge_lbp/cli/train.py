"""``edge-lbp train`` and ``edge-lbp eval``: the Trainer on an image folder or ``.npz``, from the command line."""
import contextlib
import dataclasses
import sys

from edge_lbp.cli import options
from edge_lbp.schedule import SCHEDULES
from edge_lbp.status import ExitStatus, signal_name, status_of


def add_parser(commands) -> None:
    """Two commands: ``train`` and ``eval``."""
    cmd = commands.add_parser("train", help="adapt an artifact to an image folder or .npz, with checkpoints",
                              description="Train an exported artifact on your data; resumable.")
    cmd.add_argument("artifact", metavar="ARTIFACT", help="artifact folder made by `edge-lbp export`")
    options.add_data_options(cmd, required=True)
    cmd.add_argument("--val", metavar="PATH", help="validation data (default: none)")
    cmd.add_argument("--epochs", type=options.count, default=10, metavar="E", help="(default: %(default)s)")
    cmd.add_argument("--lr", type=options.positive, metavar="X", help="peak learning rate (default: the artifact's)")
    cmd.add_argument("--schedule", default="cosine", choices=SCHEDULES, help="(default: %(default)s)")
    cmd.add_argument("--warmup-steps", type=options.count0, default=0, metavar="N", help="linear warm-up (default: 0)")
    cmd.add_argument("--accumulate", type=options.count, default=1, metavar="K", help="batches per update (default: 1)")
    cmd.add_argument("--clip-norm", type=options.positive, metavar="X",
                     help="clip the gradient norm to X (numba engine)")
    cmd.add_argument("--no-augment", action="store_true", help="no random crops and flips of the training images")
    cmd.add_argument("--checkpoint", metavar="DIR",
                     help="save a checkpoint here after every epoch and on Ctrl-C or SIGTERM (at the next update)")
    cmd.add_argument("--checkpoint-every", type=options.count, metavar="N",
                     help="also save every N optimizer updates (an update: --accumulate batches; a rejected step "
                          "is not one, so a checkpoint always follows an accepted step); the folder keeps the "
                          "latest checkpoint only")
    cmd.add_argument("--resume", action="store_true",
                     help="continue from the checkpoint in --checkpoint (its hyper-parameters, data position)")
    cmd.add_argument("--export-onnx", metavar="PATH",
                     help="write the adapted model as an inference ONNX file (its metadata: class names, input "
                          "layout, scaling, mean and std)")
    options.add_onnx_preprocessing(cmd)
    cmd.add_argument("--max-rejected", type=options.count, default=10, metavar="N",
                     help="stop after N steps in a row with a non-finite loss or gradient (default: %(default)s)")
    options.add_seed(cmd)
    groups = {}
    for method, option in _device_options():
        if method not in groups:
            groups[method] = cmd.add_argument_group(f"{method.SYNTAX} artifacts")
        kind = type(option.default)
        groups[method].add_argument(f"--{method.OPTION_PREFIX}-{option.name}", dest=_dest(method, option),
                                    type=kind, metavar="N" if kind is int else "X",
                                    help=f"{option.metadata['help']} (default: {option.default})")
    cmd.set_defaults(run=train)

    cmd = commands.add_parser("eval", help="loss and accuracy of an artifact (or a checkpoint) on data")
    cmd.add_argument("artifact", metavar="ARTIFACT")
    options.add_data_options(cmd, required=True)
    cmd.add_argument("--checkpoint", metavar="DIR", help="evaluate the parameters saved here")
    cmd.add_argument("--split", default="val", metavar="NAME",
                     help="folder: PATH/NAME if it exists; .npz: x_NAME/y_NAME, x_test for val, else x/y "
                          "(default: %(default)s)")
    cmd.add_argument("--train-data", metavar="PATH",
                     help="the training data: its class counts group the classes into many (over 100 images), medium "
                          "and few (under 20) shots, and the accuracy of each group is reported")
    cmd.set_defaults(run=evaluate)


def train(args) -> int:
    from edge_lbp.checkpoint import locked
    from edge_lbp.core.files import check_writable

    # Everything that could fail after the run fails now: a second writer on the checkpoint folder, an output
    # path that cannot be written.
    if args.onnx_preprocessing and not args.export_onnx:
        raise ValueError("--onnx-preprocessing shapes the --export-onnx model: give --export-onnx PATH too")
    if args.export_onnx:
        check_writable(args.export_onnx)
    if args.checkpoint:
        check_writable(args.checkpoint, folder=True)
    with locked(args.checkpoint) if args.checkpoint else contextlib.nullcontext():
        return _train(args)


def _train(args) -> int:
    from edge_lbp.checkpoint import has_checkpoint
    from edge_lbp.data import open_dataset
    from edge_lbp.trainer import Trainer

    if args.checkpoint_every and not args.checkpoint:
        raise ValueError("--checkpoint-every needs --checkpoint DIR (the folder to save to)")
    if args.resume:
        if not args.checkpoint:
            raise ValueError("--resume needs --checkpoint DIR (the folder to continue from)")
        trainer = Trainer.resume(args.checkpoint, args.artifact, engine=args.engine, threads=args.threads)
        if trainer.epoch >= args.epochs:
            print(f"{args.checkpoint}: already finished ({trainer.epoch} of {args.epochs} epochs done); "
                  "nothing to train (raise --epochs to continue)")
        else:
            print(f"resuming {args.checkpoint}: epoch {trainer.epoch + 1}, batch {trainer.batch}, "
                  f"update {trainer.updates} (hyper-parameters from the checkpoint)")
    else:
        if args.checkpoint and has_checkpoint(args.checkpoint):
            raise ValueError(f"{args.checkpoint}: holds a checkpoint; pass --resume to continue it, or choose "
                             "another folder")
        trainer = Trainer(args.artifact, engine=args.engine, threads=args.threads, lr=args.lr,
                          schedule=args.schedule, warmup_steps=args.warmup_steps, accumulate=args.accumulate,
                          clip_norm=args.clip_norm, seed=args.seed, max_rejected=args.max_rejected,
                          method_options=_method_options(args))
    train = open_dataset(args.data, trainer.manifest, split="train", classes=trainer.classes)
    val = open_dataset(args.val, trainer.manifest, split="val", classes=train.classes) if args.val else None
    print(f"train: {len(train)} images, {len(train.classes)} classes ({train.source})"
          + (f"; val: {len(val)} images ({val.source})" if val is not None else ""))

    def report(_, record):
        val_part = (f"  val_loss {record['val_loss']:.4f}  val_accuracy {record['val_accuracy']:.4f}"
                    if record["val_loss"] is not None else "")
        print(f"epoch {record['epoch']}/{args.epochs}  train_loss {record['train_loss']:.4f}{val_part}"
              f"  lr {record['lr']:.3g}  {record['seconds']:.1f} s", flush=True)

    try:
        trainer.fit(train, val, epochs=args.epochs, batch_size=args.batch_size, augment=not args.no_augment,
                    callbacks=[report], checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every)
    except KeyboardInterrupt as exc:
        print(f"edge-lbp: stopped by {signal_name(exc)} in epoch {trainer.epoch + 1} after batch {trainer.batch}"
              f"{_what_was_saved(trainer, args.checkpoint)}", file=sys.stderr)
        return status_of(exc)
    if args.export_onnx:
        print(f"inference model: {trainer.export_inference(args.export_onnx, preprocess=args.onnx_preprocessing)}")
    return ExitStatus.OK


def _what_was_saved(trainer, checkpoint) -> str:
    """A stop inside training saves at the next update; one before it started, or a second signal, does not."""
    if not checkpoint:
        return ""
    if trainer.saved_at == (trainer.epoch, trainer.batch):
        return f"; saved to {checkpoint}, continue with --resume"
    if trainer.saved_at is None:
        return f"; nothing saved in {checkpoint} yet"
    epoch, batch = trainer.saved_at
    return f"; {checkpoint} holds epoch {epoch + 1} after batch {batch}, continue from there with --resume"


def _device_options():
    """``(method, field)`` of every method's options on the device (``Method.OPTIONS``): zo-hybrid's ``--zo-eps``,
    ``--zo-probes``, ``--zo-lr``."""
    from edge_lbp.methods import METHODS

    return [(method, option) for method in METHODS if method.OPTIONS is not None
            for option in dataclasses.fields(method.OPTIONS)]


def _dest(method, option) -> str:
    return f"{method.OPTION_PREFIX}_{option.name}"


def _method_options(args):
    """The method options given on the command line (the others keep their defaults); None when none is. The
    artifact's method checks them: another method's refuses them in one line."""
    given = {option.name: vars(args)[_dest(method, option)] for method, option in _device_options()}
    return {name: value for name, value in given.items() if value is not None} or None


def evaluate(args) -> int:
    from edge_lbp.data import open_dataset
    from edge_lbp.longtail import class_counts
    from edge_lbp.trainer import Trainer

    trainer = Trainer(args.artifact, engine=args.engine, threads=args.threads)
    classes = trainer.load_parameters(args.checkpoint)["classes"] if args.checkpoint else None
    counts = None
    if args.train_data:
        train = open_dataset(args.train_data, trainer.manifest, split="train", classes=classes)
        classes, counts = classes or train.classes, class_counts(train.labels, len(train.classes))
    data = open_dataset(args.data, trainer.manifest, split=args.split, classes=classes)
    metrics = trainer.evaluate(data, batch_size=args.batch_size, train_counts=counts)
    print(f"loss {metrics['loss']:.4f}  accuracy {metrics['accuracy']:.4f}  samples {metrics['samples']}")
    names = data.classes + [str(k) for k in range(len(data.classes), len(metrics["per_class"]))]
    print("per class: " + "  ".join(f"{name} {'-' if acc is None else f'{acc:.4f}'}"
                                    for name, acc in zip(names, metrics["per_class"])))
    if counts is not None:
        print("by training images: " + "  ".join(f"{group} {'-' if acc is None else f'{acc:.4f}'}"
                                                 for group, acc in metrics["groups"].items()))
    return ExitStatus.OK
