import torch

from orchestrator.train.memory import model_state_bytes, peak_bytes


def test_model_states_of_adamw_are_params_grads_and_two_moments():
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 8))
    parameters = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters())
    assert model_state_bytes(model, optimizer) == 4 * parameters  # fp32 weights only: no grads, no state yet

    model(torch.randn(4, 64)).sum().backward()
    optimizer.step()
    # weights, gradients, exp_avg and exp_avg_sq in fp32; the step counters are one-element tensors
    counters = 4 * len(optimizer.state)
    assert model_state_bytes(model, optimizer) == 4 * 4 * parameters + counters


def test_views_of_one_flat_buffer_count_once_inside_a_wrapper():
    """DeepSpeed's ZeRO optimizers wrap the torch optimizer, whose parameters are views of one flat fp32 partition."""
    model = torch.nn.Linear(10, 10, bias=False)
    flat = torch.zeros(150)
    partitions = [torch.nn.Parameter(flat[:100]), torch.nn.Parameter(flat[100:])]

    class Wrapper:
        optimizer = torch.optim.SGD(partitions, lr=0.1)

    assert model_state_bytes(model, Wrapper()) == 4 * 100 + 4 * 150


def test_peak_is_at_least_what_the_process_holds_now():
    held = torch.ones(50_000_000)  # 200 MB
    assert peak_bytes(use_gpu=False) >= held.numel() * 4
