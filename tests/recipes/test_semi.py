"""The semi-supervised recipe: the unlabelled losses by hand, which weights their gradients reach,
each step without unlabelled data equal to the supervised step, the same weights as recipe mvkbc
without unlabelled cases, resume within an epoch, and train / predict / evaluate on written VOIs."""

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from medsight.cli import main
from medsight.engine import LossWeight
from medsight.engine.checkpoint import load_state
from medsight.models import create_model
from medsight.data import open_dataset
from medsight.recipes import load_config, load_recipe, recipe_for
from medsight.recipes.mvkbc import MVKBCOptions, MVKBCStep
from medsight.recipes.semi import cutout
from medsight.recipes.semi_steps import FixMatchStep, MeanTeacherStep, consistency_loss, fixmatch_loss
from medsight.rundir import RunDir

from builders import CONFIGS, write_vois

CPU = torch.device("cpu")


class NoUpdate:
    """A step context that keeps the loss's graph: the test takes the gradients itself."""

    device, epoch, step = CPU, 1, 0

    def update(self, loss, *names):
        self.loss = loss


def small_model(confident: bool = False):
    torch.manual_seed(0)
    model = create_model("mvkbc", in_channels=27, backbone="resnet14", hidden=(8, 4), width=4, share_views=True)
    if confident:  # every nodule scored near 1, so FixMatch's threshold keeps the pseudo-labels
        with torch.no_grad():
            model.fusion.bias.fill_(6.0)
    return model


def batches(n_lb=4, n_ulb=6, views=("weak", "strong")):
    torch.manual_seed(1)
    lb = {"x": torch.randn(n_lb, 27, 32, 32), "mask": None, "y": torch.tensor([0, 1] * (n_lb // 2))}
    ulb = {name: torch.randn(n_ulb, 27, 32, 32, requires_grad=True) for name in views}
    ulb.update(mask=None, y=torch.full((n_ulb,), -1))
    return lb, ulb


def test_the_unlabelled_losses_by_hand():
    s, t = torch.tensor([0.0, 2.0, -1.0]), torch.tensor([1.0, 2.0, -3.0])
    want = ((torch.sigmoid(s) - torch.sigmoid(t)) ** 2).mean()
    assert consistency_loss(s, t).item() == pytest.approx(want.item())
    weak = torch.tensor([4.0, -4.0, 0.5])  # p = 0.982, 0.018 (confident), 0.62 (not)
    strong = torch.tensor([1.0, 1.0, 1.0])
    loss, mask = fixmatch_loss(strong, weak, 0.95)
    assert mask.tolist() == [1.0, 1.0, 0.0]
    by_hand = (-torch.log(torch.sigmoid(torch.tensor(1.0))) - torch.log(1 - torch.sigmoid(torch.tensor(1.0)))) / 3
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert fixmatch_loss(strong, torch.zeros(3))[0].item() == 0.0  # nothing confident: no loss


def test_mean_teachers_consistency_trains_the_student_only():
    model = small_model()
    step = MeanTeacherStep(model, MVKBCOptions(), None, LossWeight(1.0))
    lb, ulb = batches(views=("student", "teacher"))
    out = step.train_step({"lb": lb, "ulb": ulb}, NoUpdate())
    unsup = out["unsup_loss"]
    assert unsup.item() > 0
    teacher = list(step.models["teacher"].parameters())
    assert teacher and not any(p.requires_grad for p in teacher)  # no optimiser, no gradient
    grads = torch.autograd.grad(unsup, [ulb["student"], ulb["teacher"], *model.parameters()], allow_unused=True)
    assert grads[0].abs().sum() > 0 and grads[1] is None  # the teacher's view is a target only
    assert all(g is not None and g.abs().sum() > 0 for g in grads[2:2 + len(list(model.streams.parameters()))])


def test_fixmatch_pseudo_labels_carry_no_gradient():
    model = small_model(confident=True)
    step = FixMatchStep(model, MVKBCOptions(), None, LossWeight(1.0), threshold=0.95)
    lb, ulb = batches()
    out = step.train_step({"lb": lb, "ulb": ulb}, NoUpdate())
    assert out["pseudo_labelled"].item() == 1.0 and out["unsup_loss"].item() > 0
    grads = torch.autograd.grad(out["unsup_loss"], [ulb["weak"], ulb["strong"], model.fusion.weight],
                                allow_unused=True)
    assert grads[0] is None  # the weak view only labels
    assert grads[1].abs().sum() > 0 and grads[2].abs().sum() > 0


@pytest.mark.parametrize("make", [
    lambda m: MeanTeacherStep(m, MVKBCOptions(), None, LossWeight(50.0)),
    lambda m: FixMatchStep(m, MVKBCOptions(), None, LossWeight(1.0)),
])
def test_without_unlabelled_data_each_step_is_the_supervised_step(make):
    lb, _ = batches()
    model = small_model()
    torch.manual_seed(5)  # dropout draws alike in both
    want = MVKBCStep(model, MVKBCOptions(), None).train_step({"x": lb["x"], "mask": None, "y": lb["y"]}, NoUpdate())
    torch.manual_seed(5)
    got = make(model).train_step({"lb": lb, "ulb": None}, NoUpdate())
    assert got["loss"].item() == want["loss"].item()
    assert got["unsup_loss"].item() == 0.0


def test_cutout_blanks_one_square_per_patch():
    x = torch.ones(2, 3, 10, 10)
    y = cutout(x, 0.4, torch.Generator().manual_seed(0))
    blank = (y == 0).sum((2, 3))
    assert torch.all(blank > 0) and torch.all(blank <= 16)  # a 4 x 4 square, clipped at the border
    assert torch.equal(cutout(x, 0.0, torch.Generator()), x)


def tiny(data, run, *sets):
    return ["--data", str(data), "--out", str(run), "--epochs", "2", "--device", "cpu",
            "--set", "data.folds=3", "--set", "data.fold=0", "--set", "data.val_fraction=0.3",
            "--set", "data.image_size=[24,24]", "--set", "model.options.width=4",
            "--set", "model.options.hidden=[8,4]", "--set", "train.batch_size=4",
            *[a for s in sets for a in ("--set", s)]]


@pytest.mark.slow
def test_without_unlabelled_cases_every_algorithm_trains_what_mvkbc_trains(tmp_path):
    data = write_vois(tmp_path / "vois", n_patients=9)
    assert main(["train", str(CONFIGS / "lidc_voi_mvkbc.yaml"), *tiny(data, tmp_path / "mvkbc")]) == 0
    want = load_file(tmp_path / "mvkbc" / "model.safetensors")
    for algorithm in ("supervised", "mean_teacher", "fixmatch"):
        run = tmp_path / algorithm
        assert main(["train", str(CONFIGS / f"lidc_voi_semi_{algorithm}.yaml"),
                     *tiny(data, run, "data.labelled_fraction=1", "semi.algorithm=" + algorithm)]) == 0
        got = load_file(run / "model.safetensors")
        assert all(torch.equal(want[k], got[k]) for k in want), algorithm
        assert json.loads((run / "split.json").read_text())["unlabelled"] == []
    assert (json.loads((tmp_path / "mvkbc" / "split.json").read_text())["heldout"]
            == json.loads((tmp_path / "fixmatch" / "split.json").read_text())["heldout"])  # the same folds


class Stop(Exception):
    pass


@pytest.mark.slow
def test_mean_teacher_resumes_within_an_epoch_to_the_same_weights(tmp_path, monkeypatch):
    data = write_vois(tmp_path / "vois", n_patients=9)
    overrides = ["data.folds=3", "data.fold=0", "data.val_fraction=0.3", "data.image_size=[24,24]",
                 "model.options.width=4", "model.options.hidden=[8,4]", "train.batch_size=2",
                 "data.labelled_fraction=0.5", "train.checkpoint_every=1"]  # 2 steps an epoch
    cfg = load_config(CONFIGS / "lidc_voi_semi_mean_teacher.yaml", overrides, epochs=2, data=str(data))
    recipe_for(cfg).train(RunDir(tmp_path / "full"), "cpu")
    original = MeanTeacherStep.train_step

    def interrupted(self, batch, ctx):
        if ctx.step == 3:
            raise Stop
        return original(self, batch, ctx)

    monkeypatch.setattr(MeanTeacherStep, "train_step", interrupted)
    with pytest.raises(Stop):  # at the second step of epoch 2, after a checkpoint after its first
        recipe_for(cfg).train(RunDir(tmp_path / "cut"), "cpu")
    assert load_state(tmp_path / "cut" / "checkpoint.pt")["loop"]["in_epoch"]["done"] == 1
    monkeypatch.setattr(MeanTeacherStep, "train_step", original)
    recipe_for(cfg).train(RunDir(tmp_path / "cut"), "cpu")
    for name in ("model", "teacher"):
        a, b = load_file(tmp_path / "full" / f"{name}.safetensors"), load_file(tmp_path / "cut" / f"{name}.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), name
    restored = load_recipe(tmp_path / "full", "cpu")  # predicts with the teacher
    teacher = load_file(tmp_path / "full" / "teacher.safetensors")
    assert all(torch.equal(v, teacher[f"module.{k}"]) for k, v in restored.model_.state_dict().items())
    preds = restored.predict(open_dataset(data))
    assert preds.outputs.shape == (18, 2)


@pytest.mark.slow
def test_fixmatch_trains_on_hidden_and_rating3_nodules_predicts_and_evaluates(tmp_path):
    data = write_vois(tmp_path / "vois", n_patients=12)
    table = data / "MetadatabyNoduleMaxVoting.csv"
    rows = list(csv.DictReader(table.open()))
    for row in rows[1::5]:
        row["Malignancy_value"] = 3  # rating-3 nodules: unlabelled with rating3: unlabelled
    with open(table, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    run = tmp_path / "run"
    assert main(["train", str(CONFIGS / "lidc_voi_semi_fixmatch.yaml"),
                 *tiny(data, run, "data.labelled_fraction=0.5", "semi.threshold=0.6",
                       "data.options={label_rule: malignancy, rating3: unlabelled}")]) == 0
    split = json.loads((run / "split.json").read_text())
    patient = lambda cid: cid.rsplit("_R_", 1)[0]  # noqa: E731
    rating3 = {f"{r['patient_id']}_R_{r['nodule_id']}" for r in rows[1::5]}
    barred = {patient(c) for c in split["val"] + split["heldout"]}
    assert split["unlabelled"] and not {patient(c) for c in split["unlabelled"]} & barred
    hidden = set(split["unlabelled"]) - rating3  # nodules of training patients whose labels were hidden
    assert hidden and not {patient(c) for c in hidden} & {patient(c) for c in split["train"]}
    assert not rating3 & set(split["train"] + split["val"] + split["heldout"])
    assert set(rating3) - set(split["unlabelled"]) == {c for c in rating3 if patient(c) in barred}
    history = (run / "history.csv").read_text().splitlines()[0]
    assert "unsup_loss" in history and "pseudo_labelled" in history
    assert main(["predict", str(run), str(data), "--out", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    assert main(["evaluate", str(run), str(data), "--split", "heldout", "--out", str(tmp_path / "m.json")]) == 0


def test_the_configs_say_what_they_train_and_refuse_what_they_cannot():
    from medsight.errors import ConfigError

    mt = load_config(CONFIGS / "lidc_voi_semi_mean_teacher.yaml")
    assert (mt.semi.ratio, mt.semi.weight, mt.semi.ema) == (1, 50.0, 0.999)
    fm = load_config(CONFIGS / "lidc_voi_semi_fixmatch.yaml", ["semi.uratio=null", "semi.unsup_weight=null"])
    assert (fm.semi.ratio, fm.semi.weight, fm.semi.threshold) == (7, 1.0, 0.95)  # USB's defaults
    with pytest.raises(ConfigError, match="pretrain_views"):
        load_config(CONFIGS / "lidc_voi_semi_fixmatch.yaml", ["mvkbc.pretrain_views=true"])
    with pytest.raises(ConfigError, match="labelled_fraction"):
        load_config(CONFIGS / "lidc_voi_semi_fixmatch.yaml", ["data.labelled_fraction=0"])
    with pytest.raises(ConfigError, match="labelled_fraction"):  # only the semi recipe hides labels
        load_config(CONFIGS / "lidc_voi_mvkbc.yaml", ["data.labelled_fraction=0.5"])
