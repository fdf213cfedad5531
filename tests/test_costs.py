"""MS and WM against figures computed by hand (int8 weights 1 B, int32 biases 4 B, activations 1 B)."""
from __future__ import annotations

import random

from pipeline.search.architecture import decode, plan
from pipeline.search.costs import (GraphOp, ResourceGraph, arena_plan, best_schedule, graph_from_plan,
                            model_size_bytes, working_memory_bytes)


def _costs(values: dict, shape=(16, 16, 1), classes=10, pruned=False):
    arch, compression = decode(values, shape, classes)
    if pruned:
        arch = arch.with_channel_keep(compression.block_channel_keep)
    graph = graph_from_plan(plan(arch), compression if pruned else None)
    return model_size_bytes(graph), working_memory_bytes(graph)


def test_single_conv_costs_match_hand_computation(base_values):
    # conv 3x3x1x16: 144 weights + 16 biases*4; classifier 8*8*16*10 = 10240 + 10*4
    # WM: conv 16x16x16 (4096) + its pooled output 8x8x16 (1024) = 5120
    assert _costs(base_values) == (144 + 64 + 10240 + 40, 5120)


def test_separable_conv_costs_match_hand_computation(base_values):
    v = base_values | {"block1_num_layers": 2, "block1_layer2_type": "SeparableConv2D",
                       "block1_layer2_kernel": 3, "block1_layer2_filters": 8}
    # depthwise 3*3*16 = 144 (no bias), pointwise 16*8 = 128 + 8*4, conv1 144 + 64,
    # classifier 8*8*8*10 = 5120 + 40
    ms = 144 + 64 + 144 + 128 + 32 + 5120 + 40
    # peaks: conv1 in 256 + out 4096; depthwise 4096 + 4096 = 8192; pointwise 4096 + 2048
    assert _costs(v) == (ms, 8192)


def test_right_branch_keeps_block_input_alive(base_values):
    v = base_values | {"downsample_input": True, "input_downsampling_rate": 2,
                       "right_branch": True, "fc_fraction_right": 1.0, "total_fc_weights": 6400,
                       "merge_type": "Concatenate"}
    # input 16x16 -> pool 8x8 (64); right FC on 64 features: 6400/64 = 100 units
    # conv 8x8x16 (1024) -> pool 4x4x16 (256); concat 256 + 100 = 356 -> classifier 10
    ms = 144 + 64 + 64 * 100 + 100 * 4 + 356 * 10 + 40
    # running the right FC first keeps its 100 outputs alive through the block:
    # conv 1024 + pool 256 + 100 = 1380. Running it last keeps its 64 inputs alive instead:
    # conv 1024 + pool 256 + 64 = 1344, the smaller peak
    assert _costs(v) == (ms, 1344)


def test_downsampled_conv_and_pruning_targets(base_values):
    v = base_values | {"block1_layer1_type": "DownsampledConv2D", "block1_layer1_downsample_fraction": 0.25,
                       "block1_sparsity": 0.5, "fc_sparsity": 0.75, "block1_channel_keep": 0.5}
    # 16 filters keep 8; reduce 1x1 to round(16*0.25) = 4 channels, no bias: 4 rows of one
    # weight, each a block -> 2 blocks kept.
    # 3x3x4x8: 8 rows of 36 = blocks of 16, 16, 4 -> 24 blocks, 12 kept, at most 12 * 16 = 192
    # weights, + 8 biases; classifier 10 rows of 512 = 320 blocks of 16, 80 kept = 1280 + 40
    # WM: 3x3 conv reads the 16x16x4 reduction (1024) and writes 16x16x8 (2048)
    assert _costs(v, pruned=True) == (2 + 192 + 32 + 1280 + 40, 3072)


def _chain(sizes: list[int]) -> ResourceGraph:
    ops = tuple(GraphOp(f"op{i}", (f"t{i}",), f"t{i + 1}") for i in range(len(sizes) - 1))
    return ResourceGraph(ops, {f"t{i}": s for i, s in enumerate(sizes)}, ("t0",), (f"t{len(sizes) - 1}",))


def _assert_valid_placement(graph: ResourceGraph, arena: int, offsets: dict[str, int]) -> None:
    """No two buffers alive at one step share a byte, and every buffer lies inside the arena."""
    order = best_schedule(graph)[1]
    ops = {op.name: op for op in graph.ops}
    born = {t: -1 for t in graph.inputs} | {ops[name].output: i for i, name in enumerate(order)}
    dies = {t: len(order) for t in graph.outputs}
    for i, name in enumerate(order):
        for t in ops[name].inputs:
            dies[t] = max(dies.get(t, i), i)
    for a in born:
        assert 0 <= offsets[a] and offsets[a] + graph.tensor_bytes[a] <= arena
        for b in born:
            alive_together = born[a] <= dies.get(b, born[b]) and born[b] <= dies.get(a, born[a])
            if a < b and alive_together:
                assert (offsets[a] + graph.tensor_bytes[a] <= offsets[b]
                        or offsets[b] + graph.tensor_bytes[b] <= offsets[a]), (a, b)


def test_arena_of_a_layer_chain_equals_its_working_memory():
    # A search candidate (DownsampledConv2D then two convs, pool, FC) whose arena placed by
    # first fit, largest buffer first, took 22,016 B for a WM of 15,872 B.
    graph = _chain([256, 7936, 7936, 6144, 6400, 1600, 56, 10])
    arena, offsets = arena_plan(graph)
    assert working_memory_bytes(graph) == 15872 == arena
    _assert_valid_placement(graph, arena, offsets)


def test_arena_plan_is_a_valid_placement_no_smaller_than_wm_on_branching_graphs():
    rng = random.Random(0)
    for _ in range(60):
        sizes, ops = {"t0": rng.randint(16, 400)}, []
        for i in range(1, rng.randint(3, 10)):
            inputs = tuple(rng.sample(sorted(sizes)[-3:], rng.randint(1, min(2, len(sizes)))))
            ops.append(GraphOp(f"op{i}", inputs, f"t{i}"))
            sizes[f"t{i}"] = rng.randint(8, 500)
        graph = ResourceGraph(tuple(ops), sizes, ("t0",), (ops[-1].output,))
        arena, offsets = arena_plan(graph)
        assert arena >= working_memory_bytes(graph)
        _assert_valid_placement(graph, arena, offsets)


def test_search_candidates_over_the_ram_budget_by_arena_are_infeasible(base_values):
    from pipeline.search.tuner import Budget, analytical_costs

    fits = analytical_costs(base_values, (16, 16, 1), 10, Budget(5120, 1 << 20))
    assert fits["aot_arena_bytes"] == fits["working_memory_bytes"] == 5120 and fits["feasible"]
    assert not analytical_costs(base_values, (16, 16, 1), 10, Budget(5119, 1 << 20))["feasible"]
