"""DeviceCollectives refuses tensors on another device than the engine's, before any collective runs."""
import pytest
import torch

from rqscale.utils.collectives import CollectiveDeviceError, DeviceCollectives, same_device


def test_a_tensor_on_another_device_is_refused_even_without_a_process_group():
    helper = DeviceCollectives(torch.device("meta"))  # stands in for a GPU: not the default device
    for call in (helper.all_reduce_sum, helper.all_reduce_min, helper.all_reduce_mean, helper.broadcast):
        with pytest.raises(CollectiveDeviceError, match="engine runs on meta"):
            call(torch.ones(2))  # a CPU tensor from the default device


def test_tensors_it_makes_are_on_its_device():
    assert DeviceCollectives(torch.device("meta")).tensor([1.0, 2.0]).device.type == "meta"
    assert DeviceCollectives(torch.device("cpu")).tensor(1.0).device.type == "cpu"


def test_without_a_device_it_checks_nothing_and_cannot_make_tensors():
    helper = DeviceCollectives(None)
    helper.all_reduce_sum(torch.ones(1))  # no process group: the identity
    with pytest.raises(CollectiveDeviceError, match="engine's device"):
        helper.tensor(1.0)


def test_single_process_is_the_identity():
    helper = DeviceCollectives(torch.device("cpu"))
    t = torch.tensor([3.0])
    helper.all_reduce_mean(t)
    assert t.item() == 3.0 and helper.broadcast_object({"a": 1}) == {"a": 1}
    helper.barrier()


def test_same_device_compares_types_and_indices():
    assert same_device(torch.device("cpu"), torch.device("cpu"))
    assert not same_device(torch.device("cpu"), torch.device("meta"))
