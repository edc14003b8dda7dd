"""Each distillation loss on tiny tensors: its value against a hand computation, and the direction
of its gradient (a step against the gradient moves the student towards the teacher)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from esdistill.export.losses import (
    CombinedLoss,
    InfoNCELoss,
    ListwiseKLLoss,
    MarginMSELoss,
    PairwiseDistillLoss,
    PlackettLuceLoss,
    build_loss,
)
from esdistill.plugin._errors import ConfigError

S = [0.2, 0.5, 0.1]
T = [2.0, 0.0, -1.0]


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    z = sum(e)
    return [v / z for v in e]


def _grad(loss, s=S, t=T, mask=None, **kw):
    st = torch.tensor([s], requires_grad=True)
    value = loss.compute_loss(st, torch.tensor([t]), mask, **kw)
    value.backward()
    return value.item(), st.grad[0].tolist()


def test_kl_value_and_gradient():
    loss = ListwiseKLLoss(student_temperature=0.5, teacher_temperature=2.0)
    value, grad = _grad(loss)
    ps = _softmax([x / 0.5 for x in S])
    pt = _softmax([x / 2.0 for x in T])
    want = sum(p * math.log(p / q) for p, q in zip(pt, ps))
    assert value == pytest.approx(want, rel=1e-5)
    # d/ds_i KL = (ps_i - pt_i) / T_s
    assert grad == pytest.approx([(a - b) / 0.5 for a, b in zip(ps, pt)], rel=1e-4)
    assert grad[0] < 0 and grad[1] > 0  # the teacher's favourite goes up, the student's wrong pick down


def test_kl_zero_when_distributions_match_and_mask_ignores_padding():
    loss = ListwiseKLLoss(student_temperature=1.0, teacher_temperature=1.0)
    value, _ = _grad(loss, s=[1.0, 0.0, 5.0], t=[1.0, 0.0, -3.0], mask=torch.tensor([[True, True, False]]))
    assert value == pytest.approx(0.0, abs=1e-6)
    value, _ = _grad(loss, s=[1.0, 0.0, 5.0], t=[1.0, 0.0, -3.0])
    assert value > 0.1


def test_margin_mse_value_and_gradient():
    loss = MarginMSELoss(student_temperature=1.0, teacher_temperature=1.0)
    value, grad = _grad(loss)
    # best teacher candidate is 0; margins: student (0.2-0.5, 0.2-0.1) = (-0.3, 0.1); teacher (2, 3)
    want = ((-0.3 - 2.0) ** 2 + (0.1 - 3.0) ** 2) / 2
    assert value == pytest.approx(want, rel=1e-5)
    assert grad[0] < 0 and grad[1] > 0 and grad[2] > 0
    assert sum(grad) == pytest.approx(0.0, abs=1e-5)  # margins are translation invariant


def test_pairwise_value_and_gradient():
    loss = PairwiseDistillLoss(student_temperature=1.0, teacher_temperature=1.0)
    value, grad = _grad(loss, s=[0.0, 1.0], t=[1.0, 0.0])

    def bce(x, y):
        p = 1 / (1 + math.exp(-x))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    p01 = 1 / (1 + math.exp(-1.0))
    want = (bce(-1.0, p01) + bce(1.0, 1 - p01)) / 2
    assert value == pytest.approx(want, rel=1e-5)
    assert grad[0] < 0 < grad[1]


def test_infonce_value_in_batch_and_gradient():
    loss = InfoNCELoss(student_temperature=1.0)
    value, grad = _grad(loss)
    want = -math.log(_softmax(S)[0])  # positive = the teacher's best (index 0)
    assert value == pytest.approx(want, rel=1e-5)
    assert grad[0] < 0 and grad[1] > 0
    st = torch.tensor([S], requires_grad=True)
    extra = torch.tensor([[0.3, 0.4]])
    v2 = loss.compute_loss(st, torch.tensor([T]), extra_negatives=extra, positives=torch.tensor([1]))
    assert v2.item() == pytest.approx(-math.log(_softmax(S + [0.3, 0.4])[1]), rel=1e-5)


def test_plackett_luce_value_translation_invariance_and_gradient():
    loss = PlackettLuceLoss(student_temperature=1.0, teacher_temperature=1.0)
    value, grad = _grad(loss)
    w = _softmax(T)  # teacher order: 0, 1, 2
    lse = lambda xs: math.log(sum(math.exp(x) for x in xs))
    want = w[0] * (lse(S) - S[0]) + w[1] * (lse(S[1:]) - S[1]) + w[2] * 0.0
    assert value == pytest.approx(want, rel=1e-5)
    shifted, _ = _grad(loss, s=[x + 3.0 for x in S])
    assert shifted == pytest.approx(value, rel=1e-5)
    assert grad[0] < 0 and grad[1] > 0


@pytest.mark.parametrize("cls", [ListwiseKLLoss, MarginMSELoss, PairwiseDistillLoss, InfoNCELoss, PlackettLuceLoss])
def test_gradient_step_lowers_the_loss_and_padding_gets_no_gradient(cls):
    loss = cls(student_temperature=0.5, teacher_temperature=1.0)
    s = torch.tensor([[0.1, 0.4, 0.3, 9.0], [0.0, -0.2, 0.5, 0.0]], requires_grad=True)
    t = torch.tensor([[3.0, 1.0, -1.0, 0.0], [0.5, 2.0, -2.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, False]])
    before = loss.compute_loss(s, t, mask)
    before.backward()
    assert s.grad[:, 3].abs().max().item() == 0.0
    with torch.no_grad():
        after = loss.compute_loss(s - 0.05 * s.grad, t, mask)
    assert after.item() < before.item()


def test_build_loss_and_combined():
    combo = build_loss("kl+0.1*infonce", student_temperature=1.0)
    assert isinstance(combo, CombinedLoss)
    s, t = torch.tensor([S]), torch.tensor([T])
    want = ListwiseKLLoss(student_temperature=1.0)(s, t) + 0.1 * InfoNCELoss(student_temperature=1.0)(s, t)
    assert combo(s, t).item() == pytest.approx(want.item(), rel=1e-6)
    assert isinstance(build_loss("margin-mse"), MarginMSELoss)
    with pytest.raises(ConfigError, match="unknown loss"):
        build_loss("kl+mse")
    with pytest.raises(ConfigError, match="temperatures"):
        ListwiseKLLoss(student_temperature=0)


def test_infonce_exclude_drops_false_negatives_from_the_denominator():
    loss = InfoNCELoss(student_temperature=1.0)
    s, t = torch.tensor([S]), torch.tensor([T])
    got = loss.compute_loss(s, t, exclude=torch.tensor([[True, True, False]]), positives=torch.tensor([0]))
    assert got.item() == pytest.approx(-math.log(_softmax([S[0], S[2]])[0]), rel=1e-5)


def _entropy(xs, temperature):
    p = _softmax([x / temperature for x in xs])
    return -sum(v * math.log(v) for v in p)


def test_matched_teacher_temperature_gives_the_students_sharpness():
    from esdistill.export.losses import match_teacher_temperature

    student = [[0.9, 0.5, 0.4, 0.3], [0.7, 0.65, 0.2, 0.1]]
    teacher = [[1.2, -0.2, -1.0, 0.0], [0.5, 1.5, -1.0, -1.0]]
    t = match_teacher_temperature(student, teacher, student_temperature=0.05)
    mean = lambda rows, temp: sum(_entropy(r, temp) for r in rows) / len(rows)
    assert mean(teacher, t) == pytest.approx(mean(student, 0.05), abs=1e-6)
    # a sharper student (lower temperature) asks for a sharper teacher (lower temperature)
    assert match_teacher_temperature(student, teacher, student_temperature=0.02) < t
    # a student with no preference at all cannot be matched inside the range: the flattest bound
    assert match_teacher_temperature([[0.5, 0.5, 0.5]], [[1.0, 0.0, -1.0]], bounds=(0.01, 100.0)) == 100.0
    with pytest.raises(ConfigError, match="two or more"):
        match_teacher_temperature([[0.5]], [[1.0]])
    with pytest.raises(ConfigError, match="student lists"):
        match_teacher_temperature([[0.5, 0.1]], [])
