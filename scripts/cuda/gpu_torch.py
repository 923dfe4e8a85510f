"""The PyTorch side of scripts/cuda/gpu_bench.py: every measurement that needs torch (and transformers)
on the GPU, behind a few functions, so that gpu_bench.py itself (which runs ember's processes
under timeouts and writes each row as it is measured) imports torch only when a step needs it,
and so that the CPU dry run (scripts/cuda/gpu-dry-run.sh) can put a stand-in beside it.

Everything here runs on the same card as ember, in the same run:
  - matmul_peak: the card's FP16 tensor-core rate, a large torch.matmul (8192^3, f16 in, f32
    accumulate as cuBLAS does by default), the yardstick for "% of peak";
  - sdpa_tflops: torch's scaled_dot_product_attention on the attention shape ember is timed on;
  - gemm: torch.matmul(x, w.T) (cuBLAS, f16 in and out) on one GEMM shape, and its error against
    float64 on 64 sampled rows;
  - ModelRun: a random-weight BertModel shaped like a bge model (LayerNorms off their init
    values, as a trained model's), its float32 CLS embeddings of the first sequences of each
    corpus (the reference), saved as f16 safetensors for ember, and torch fp16 (sdpa) timed on
    each corpus in length-sorted padded batches at the best budget of a short sweep.
"""
import math
import struct
import time

import torch
import torch.nn.functional as F


def device_name():
    return torch.cuda.get_device_name()


def matmul_peak(n=8192, iters=30):
    """TFLOP/s of a large f16 matmul: the card's practical tensor-core rate."""
    a = torch.randn(n, n, device="cuda", dtype=torch.float16)
    b = torch.randn(n, n, device="cuda", dtype=torch.float16)
    for _ in range(3):
        torch.matmul(a, b)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        torch.matmul(a, b)
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1e3 / iters
    del a, b
    torch.cuda.empty_cache()
    return 2 * n ** 3 / seconds / 1e12


def sdpa_tflops(seq, heads, head_dim, sequences, repeats):
    """torch's scaled_dot_product_attention, no mask, in TFLOP/s (4 * seq^2 * head_dim per head
    and sequence)."""
    flops = 4 * seq * seq * head_dim * heads * sequences
    q, k, v = (torch.randn(sequences, heads, seq, head_dim, device="cuda", dtype=torch.float16) for _ in range(3))
    for _ in range(3):
        F.scaled_dot_product_attention(q, k, v)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        F.scaled_dot_product_attention(q, k, v)
    end.record()
    torch.cuda.synchronize()
    tflops = flops / (start.elapsed_time(end) / 1e3 / repeats) / 1e12
    del q, k, v
    torch.cuda.empty_cache()
    return tflops


def sampled_rows(m):
    return [(i * (m - 1)) // 63 for i in range(64)]


@torch.inference_mode()
def gemm(m, n, k, min_ms):
    """torch.matmul(x, w.T) in f16 on cuBLAS: seconds per call (CUDA events, back-to-back calls
    for at least min_ms) and the relative Frobenius error against float64 on 64 sampled rows."""
    g = torch.Generator(device="cuda").manual_seed(m * 131 + n * 7 + k)
    x = (torch.rand(m, k, device="cuda", generator=g) * 2 - 1).half()
    w = ((torch.rand(n, k, device="cuda", generator=g) * 2 - 1) * (2 / math.sqrt(k))).half()
    run = lambda: torch.matmul(x, w.t())  # noqa: E731
    for _ in range(3):
        out = run()
    torch.cuda.synchronize()
    reps, total, batch = 0, 0.0, 10
    while total * 1e3 < min_ms or reps < 10:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(batch):
            run()
        end.record()
        end.synchronize()
        total += start.elapsed_time(end) / 1e3
        reps += batch
        batch = min(batch * 2, 2000)
    rows = torch.tensor(sampled_rows(m), device="cuda")
    ref = x[rows].double() @ w.double().t()
    err = ((out[rows].double() - ref).norm() / ref.norm()).item()
    del x, w, out
    return total / reps, err


# ---- end to end --------------------------------------------------------------------------------


def read_npy(path):
    raw = open(path, "rb").read()
    header_len = struct.unpack("<H", raw[8:10])[0]
    header = raw[10:10 + header_len].decode()
    rows, cols = [int(v) for v in header.split("(")[1].split(")")[0].split(",") if v.strip()]
    return torch.frombuffer(bytearray(raw[10 + header_len:]), dtype=torch.float32).reshape(rows, cols)


def torch_batches(seqs, budget):
    """Length-sorted batches of at most `budget` padded tokens, as tensors on the host."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    batches, cur = [], []
    for i in order:
        longest = len(seqs[cur[0]]) if cur else len(seqs[i])
        if cur and (len(cur) + 1) * longest > budget:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    out = []
    for b in batches:
        width = max(len(seqs[i]) for i in b)
        ids = torch.zeros(len(b), width, dtype=torch.long)
        mask = torch.zeros(len(b), width, dtype=torch.long)
        for r, i in enumerate(b):
            ids[r, :len(seqs[i])] = torch.tensor(seqs[i])
            mask[r, :len(seqs[i])] = 1
        out.append((b, ids.pin_memory(), mask.pin_memory()))
    return out


@torch.inference_mode()
def torch_embed(model, batches, n, dim):
    result = torch.empty(n, dim, dtype=torch.float32, device="cuda")
    for b, ids, mask in batches:
        hidden = model(input_ids=ids.cuda(non_blocking=True), attention_mask=mask.cuda(non_blocking=True)).last_hidden_state
        result[torch.tensor(b, device="cuda")] = F.normalize(hidden[:, 0].float(), dim=-1)
    torch.cuda.synchronize()
    return result


class ModelRun:
    """One bge-shaped random model: the float32 reference, the f16 copy for ember, torch fp16's
    timings. `shape` is (hidden, layers, heads, intermediate); `corpora` maps a corpus name to
    its token id lists; the first `check` sequences of each are compared against float32."""

    def __init__(self, name, shape, corpora, check, batch_tokens):
        from transformers import BertConfig, BertModel

        hidden, layers, heads, inter = shape
        self.name, self.hidden, self.check = name, hidden, check
        torch.manual_seed(0)
        config = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                            intermediate_size=inter, vocab_size=30522, max_position_embeddings=512)
        try:
            config._attn_implementation = "sdpa"  # the default on recent transformers anyway
        except Exception as e:  # noqa: BLE001 - older or newer transformers spell it differently
            print(f"note: could not ask for sdpa explicitly ({e})", flush=True)
        model = BertModel(config, add_pooling_layer=False).eval().cuda()
        # Weights a trained model would have rather than init noise: LayerNorm not exactly 1 / 0.
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.LayerNorm):
                    m.weight.uniform_(0.8, 1.2)
                    m.bias.uniform_(-0.1, 0.1)
        self.attention = getattr(model.config, "_attn_implementation", "?")
        self.refs = {}
        for corpus, seqs in corpora.items():
            head = seqs[:check]
            self.refs[corpus] = torch_embed(model, torch_batches(head, batch_tokens), len(head), hidden)
        self.model = model.half()

    def save_f16(self, model_dir):
        self.model.save_pretrained(model_dir, safe_serialization=True)

    def time_torch(self, corpus, seqs, budgets, passes):
        """torch fp16's best time over the corpus: one pass per padded-token budget, then
        `passes` more at the best one. Returns (seconds, budget, min cosine against float32)."""
        sweep = {}
        for i, budget in enumerate(budgets):
            batches = torch_batches(seqs, budget)
            if i == 0:
                torch_embed(self.model, batches, len(seqs), self.hidden)  # warm-up
            torch.cuda.synchronize()
            start = time.perf_counter()
            torch_embed(self.model, batches, len(seqs), self.hidden)
            sweep[budget] = time.perf_counter() - start
        budget = min(sweep, key=sweep.get)
        batches = torch_batches(seqs, budget)
        best = sweep[budget]
        for _ in range(max(passes - 1, 0)):
            torch.cuda.synchronize()
            start = time.perf_counter()
            torch_embed(self.model, batches, len(seqs), self.hidden)
            best = min(best, time.perf_counter() - start)
        head = seqs[:self.check]
        torch16 = torch_embed(self.model, torch_batches(head, budget), len(head), self.hidden)
        return best, budget, (torch16 * self.refs[corpus]).sum(-1).min().item()

    def release_model(self):
        """Frees the torch model (the references stay) before ember runs."""
        del self.model
        torch.cuda.empty_cache()

    def ember_cosines(self, corpus, npy_path):
        """(min, mean) cosine of ember's embeddings (.npy, input order) against float32. ember
        returns f16-rounded unit vectors; renormalized in f32 the cosine measures direction."""
        ref = self.refs[corpus]
        ember = F.normalize(read_npy(npy_path)[:len(ref)].cuda(), dim=-1)
        cos = (ember * ref).sum(-1)
        return cos.min().item(), cos.mean().item()
