"""Residual quantizer vs independent references of Eqs. 1, 3-5, 7, 15 and the EMA rule."""
import pytest
import torch

from rqscale.quantizer import LocalCollective, ResidualQuantizer


def make_rq(K=32, dim=8, depth=4, **kw):
    torch.manual_seed(0)
    return ResidualQuantizer(K, dim, depth, collective=LocalCollective(), **kw)


def brute_force_codes(z, codebooks):
    """Eqs. 3-4 written out: per vector, per depth, scan every code for the nearest."""
    out = torch.empty(z.shape[0], len(codebooks), dtype=torch.long)
    for i, vec in enumerate(z):
        r = vec.clone()
        for d, book in enumerate(codebooks):
            best, best_dist = -1, float("inf")
            for k in range(book.shape[0]):
                dist = float(((r - book[k]) ** 2).sum())
                if dist < best_dist:
                    best, best_dist = k, dist
            out[i, d] = best
            r = r - book[best]
    return out


@pytest.mark.parametrize("shared", [True, False])
def test_codes_equal_brute_force(shared):
    rq = make_rq(shared_codebook=shared)
    z = torch.randn(40, 8) * 2
    books = [rq.book(d).embed for d in range(rq.depth)]
    assert torch.equal(rq.encode(z), brute_force_codes(z, books))


def test_large_codebook_chunked_search_matches_cdist():
    from rqscale.quantizer.codebook import _DISTANCE_ELEMENTS_PER_CHUNK

    rq = ResidualQuantizer(4096, 16, 1, collective=LocalCollective())
    rows_per_chunk = _DISTANCE_ELEMENTS_PER_CHUNK // 4096
    z = torch.randn(2 * rows_per_chunk + 123, 16)  # two full chunks and a ragged third
    expected = torch.cdist(z.double(), rq.codebook.double()).argmin(dim=1)
    assert torch.equal(rq.encode(z)[:, 0], expected)


def test_decode_gives_partial_sums():
    rq = make_rq()
    z = torch.randn(2, 3, 5, 8)
    codes = rq.encode(z)
    assert codes.shape == (2, 3, 5, 4) and codes.dtype == torch.long
    for d in range(1, 5):
        expected = sum(rq.codebook[codes[..., i]] for i in range(d))
        assert torch.allclose(rq.decode(codes, depth=d), expected)
    assert torch.allclose(rq.decode(codes), rq.decode(codes, depth=4))


def depth_errors(rq, z):
    codes = rq.encode(z)
    return torch.stack([(z - rq.decode(codes, depth=d)).norm(dim=-1) for d in range(1, rq.depth + 1)])


def test_error_non_increasing_per_vector_when_zero_code_exists():
    # ||r_d|| = min_k ||r_{d-1} - e(k)|| <= ||r_{d-1} - 0||: with a zero code, greedy RQ never gets worse.
    rq = make_rq(K=64)
    book = rq.codebook.clone()
    book[0] = 0
    rq.codebook = book
    errors = depth_errors(rq, torch.randn(500, 8) * 3)
    assert torch.all(errors[1:] <= errors[:-1] + 1e-5)


def test_error_decreases_with_depth_after_ema_training():
    rq = make_rq(K=64, dim=8, depth=4)
    data = torch.randn(4096, 8)
    rq.train()
    for _ in range(50):
        rq(data[torch.randint(0, 4096, (1024,))])
    mean_err = depth_errors(rq.eval(), data).mean(dim=1)
    assert torch.all(mean_err[1:] < mean_err[:-1]), mean_err


def test_forward_straight_through_and_commitment():
    rq = make_rq(restart_unused=False).eval()
    z = torch.randn(6, 8, requires_grad=True)
    out = rq(z)
    partial = [rq.decode(out.codes, depth=d) for d in range(1, 5)]
    expected = torch.stack([((z - p) ** 2).mean() for p in partial]).mean()  # Eq. 7 as the ref averages it
    assert torch.allclose(out.commitment_loss, expected)
    assert torch.allclose(out.z_q, partial[-1])
    out.z_q.sum().backward()
    assert torch.allclose(z.grad, torch.ones_like(z))  # straight-through: identity gradient


def test_ema_update_matches_closed_form():
    rq = ResidualQuantizer(3, 2, 1, decay=0.9, restart_unused=False, collective=LocalCollective())
    book = rq.book(0)
    book.embed.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]))
    book.embed_ema.copy_(book.embed)
    book.cluster_size_ema.copy_(torch.tensor([2.0, 1.0, 1.0]))
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 1.0]])  # codes 0, 0, 1; code 2 unused
    rq.train()(z)
    # By hand: N = 0.9*[2,1,1] + 0.1*[2,1,0] = [2.0, 1.0, 0.9]; m_0 = 0.1*(1,1), m_1 = 0.9*(10,0) + 0.1*(9,1)
    N = torch.tensor([2.0, 1.0, 0.9])
    m = torch.tensor([[0.1, 0.1], [9.9, 0.1], [0.0, 9.0]])
    n, eps = N.sum(), 1e-5
    smoothed = n * (N + eps) / (n + 3 * eps)
    assert torch.allclose(book.cluster_size_ema, N)
    assert torch.allclose(book.embed_ema, m)
    assert torch.allclose(book.embed, m / smoothed[:, None], atol=1e-6)


def test_shared_codebook_updated_once_per_depth():
    rq = make_rq(K=16, dim=4, depth=3, restart_unused=False)
    before = rq.book(0).cluster_size_ema.clone()
    z = torch.randn(10, 4)
    rq.train()(z)
    # Each of the 3 depths adds 10 assignments with weight (1 - decay); counts decay 3 times.
    total = rq.book(0).cluster_size_ema.sum()
    expected = before.sum() * 0.99**3 + 10 * 0.01 * (0.99**2 + 0.99 + 1)
    assert torch.isclose(total, torch.tensor(float(expected)), rtol=1e-5)


def test_dead_codes_restarted_from_batch_vectors():
    rq = ResidualQuantizer(8, 2, 1, restart_unused=True, collective=LocalCollective())
    book = rq.book(0)
    book.embed.copy_(torch.tensor([[100.0, 100.0]] * 7 + [[0.0, 0.0]]))
    book.embed_ema.copy_(book.embed)
    z = torch.randn(64, 2) * 0.1  # every vector picks code 7; codes 0..6 stay unused
    rq.train()(z)
    assert book.embed[:7].abs().max() < 1.0  # moved from (100, 100) onto the data
    assert torch.all(book.cluster_size_ema[:7] == 1.0)  # restarted with count 1
    for row in book.embed[:7]:  # each restarted code is (a jittered copy of) some batch vector
        assert (z - row).norm(dim=1).min() < 0.01


def test_soft_labels_sum_to_one_and_follow_eq15():
    rq = make_rq()
    z = torch.randn(7, 8)
    probs, codes = rq.soft_codes(z, temperature=0.5, stochastic=False)
    assert probs.shape == (7, 4, 32) and codes.shape == (7, 4)
    assert torch.allclose(probs.sum(-1), torch.ones(7, 4))
    r0 = z
    expected = torch.softmax(-((r0[:, None, :] - rq.codebook[None]) ** 2).sum(-1) / 0.5, dim=-1)  # Eq. 15
    assert torch.allclose(probs[:, 0], expected, atol=1e-6)
    assert torch.equal(codes, rq.encode(z))  # deterministic soft codes = greedy codes


def test_stochastic_codes_subtract_the_sampled_code():
    rq = make_rq()
    z = torch.randn(50, 8)
    probs, codes = rq.soft_codes(z, temperature=5.0, stochastic=True, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(codes, rq.encode(z))  # high temperature: samples differ from greedy
    r1 = z - rq.codebook[codes[:, 0]]
    expected = torch.softmax(-((r1[:, None, :] - rq.codebook[None]) ** 2).sum(-1) / 5.0, dim=-1)
    assert torch.allclose(probs[:, 1], expected, atol=1e-6)


def test_zero_temperature_is_one_hot_greedy():
    rq = make_rq()
    z = torch.randn(20, 8)
    for tau in (0.0, 1e-6):
        probs, codes = rq.soft_codes(z, temperature=tau, stochastic=True)
        assert torch.equal(codes, rq.encode(z))
        assert torch.allclose(probs, torch.nn.functional.one_hot(codes, 32).float())


def test_codebook_property_read_write_and_shape_check():
    rq = make_rq(shared_codebook=False)
    assert rq.codebook.shape == (4, 32, 8)
    new = torch.randn(4, 32, 8)
    rq.codebook = new
    assert torch.equal(rq.codebook, new)
    with pytest.raises(ValueError, match="shape"):
        rq.codebook = torch.randn(32, 8)


def test_codebook_is_buffers_not_parameters():
    rq = make_rq()
    assert list(rq.parameters()) == []
    assert {"codebooks.0.embed", "codebooks.0.embed_ema", "codebooks.0.cluster_size_ema"} <= set(rq.state_dict())


# ---- restarts planned at logging steps (no host sync per update) --------------------------------

class _CountingCollective(LocalCollective):
    def __init__(self):
        self.broadcasts = 0

    def broadcast(self, tensor, src=0):
        self.broadcasts += 1


def test_restart_budget_is_a_safe_bound_on_the_worst_case():
    from rqscale.quantizer.codebook import updates_before_dead_code

    for smallest, decay in [(1.0, 0.99), (1.02, 0.99), (5.0, 0.99), (300.0, 0.9), (float("nan"), 0.99)]:
        budget = updates_before_dead_code(smallest, decay)
        if smallest != smallest or smallest < 1.01:
            assert budget == 0
            continue
        assert smallest * decay**budget >= 1.0  # an unused code after `budget` updates is still alive
        assert smallest * decay ** (budget + 2) < 1.01  # and the bound is not loose by more than a step or two


def test_restarts_skipped_within_the_budget_change_nothing():
    """Within the budget no code can die: a quantizer that skips the restarts ends in exactly the state
    of one that ran the reference's masked restart at every update (and broadcast each time)."""
    torch.manual_seed(0)
    data = [torch.randn(256, 4) for _ in range(30)]
    planned, always = (ResidualQuantizer(16, 4, 2, collective=_CountingCollective()).train() for _ in range(2))
    planned.book(0).cluster_size_ema.fill_(50.0)  # a trained codebook: every code well used
    always.load_state_dict(planned.state_dict())
    planned.refresh_restart_budgets()
    budget = planned.book(0).restart_free_updates
    assert budget >= 2 * len(data)  # every update below is covered (2 depths each)
    before = planned.collective.broadcasts, always.collective.broadcasts
    for z in data:
        planned(z)
        always(z)
    assert planned.collective.broadcasts == before[0]  # nothing restarted, nothing sent
    assert always.collective.broadcasts == before[1] + 2 * len(data)
    for key, value in planned.state_dict().items():
        assert torch.equal(value, always.state_dict()[key]), key


def test_restarts_resume_once_the_budget_is_spent():
    rq = ResidualQuantizer(8, 2, 1, restart_unused=True, collective=_CountingCollective())
    rq.book(0).cluster_size_ema.fill_(1.5)
    rq.refresh_restart_budgets()
    budget = rq.book(0).restart_free_updates
    assert budget > 0
    for _ in range(budget):
        rq.train()(torch.randn(16, 2))
    assert rq.collective.broadcasts == 0
    rq(torch.randn(16, 2))
    assert rq.collective.broadcasts == 1  # past the bound: the reference's restart runs again


def test_code_histogram_matches_bincount():
    from rqscale.quantizer import code_histogram

    codes = torch.randint(0, 50, (7, 9))
    assert torch.equal(code_histogram(codes, 64), torch.bincount(codes.flatten(), minlength=64).float())
