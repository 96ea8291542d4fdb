"""aigc_lib.generation: the greedy decoding loop the two encoder-decoder models share."""

import torch


def test_greedy_until_eos_pads_after_eos_and_stops_when_every_row_is_done():
    from aigc_lib.generation import greedy_until_eos

    script = torch.tensor([[5, 2, 7, 7, 7, 7], [2, 9, 9, 9, 9, 9], [4, 4, 4, 2, 8, 8], [6, 6, 6, 6, 6, 6]])
    calls = []

    def next_ids(out):
        calls.append(out.shape[1])
        return script[: len(out), out.shape[1] - 1]

    got = greedy_until_eos(next_ids, 4, 6, torch.device("cpu"), bos=1, eos=2, pad=0)
    want = torch.tensor([[5, 2, 0, 0, 0, 0], [2, 0, 0, 0, 0, 0], [4, 4, 4, 2, 0, 0], [6, 6, 6, 6, 6, 6]])
    assert torch.equal(got, want)
    assert calls == [1, 2, 3, 4, 5, 6]  # each call sees BOS and the tokens so far
    calls.clear()
    got = greedy_until_eos(lambda out: script[:3, out.shape[1] - 1], 3, 6, torch.device("cpu"), bos=1, eos=2, pad=0)
    assert torch.equal(got, want[:3, :4])  # stops once the last unfinished row writes EOS
