// Numerical parity with the reference implementations.  tests/reference/make_golden.py writes
// golden files from Hugging Face transformers (DeepseekV3Attention, DeepseekV3MLP,
// DeepseekV3MoE, Glm4MoeMoE, DeepseekV3RMSNorm) and from plain-PyTorch versions of the seed's
// baseline MoE, standard attention and RMSNorm.  For every tests/data/golden/*.safetensors this
// test builds the ablate block the file names (golden.block) in float (CPUBackend<float>) with
// the ModelConfig of its metadata (golden.config, JSON), loads every weight and buffer by its HF
// name, runs forward and backward on the file's input and upstream gradient, and compares the
// output and every gradient (the input's and each parameter's) with the reference by the
// norm-wise relative error
//
//     ||ablate - reference||_2 / ||reference||_2   over all elements of the tensor
//
// (||ablate||_2 where the reference is all zeros, e.g. an expert no token chose), which must be
// below 1e-5.  MoE files also hold the experts each token chose (compared exactly) and, for the
// seed MoE, the aux loss.  The file must hold exactly the tensors the block has: a missing or
// extra weight is an error, not a silent skip.
//
// Generating the files needs PyTorch and transformers; without them in tests/data/golden/ the
// golden test reports SKIPPED (CTest counts it as skipped).  The comparison itself is always
// tested: synthetic golden files, written with ablate's safetensors writer from the forward and
// backward of ablate's own blocks, go through the same path and must match bit for bit (the
// same float computation on the loaded weights), and perturbed, incomplete or mismatched ones
// must fail.
//
// Where transformers and the seed's code differ, this is what ablate follows (and so what the
// blocks are configured as):
//   - RoPE layout.  DeepseekV3Attention with rope_interleave = true (transformers' default)
//     de-interleaves q_pe / k_pe and then rotates halves: the seed's "DeepSeek RoPE" and
//     ablate's RopeLayout::DeepSeek.  With rope_interleave = false transformers rotates pairs
//     (i, i + rope/2) of the stored layout, which ablate does not implement (it equals a
//     permutation of q_b_proj / kv_a_proj_with_mqa rows); the script asserts true.  The seed's
//     standard attention rotates interleaved pairs (2i, 2i + 1) -- not transformers' Llama-style
//     rotate-half -- and so does ablate's MHA (RopeLayout::Interleaved): its golden comes from
//     plain PyTorch written after the seed's code.
//   - Latent norm eps.  transformers releases build q_a_layernorm / kv_a_layernorm with
//     config.rms_norm_eps or with the norm's default 1e-6; ablate keeps mla_rms_norm_eps (the
//     seed's 1e-6 inside DeepSeek modules) apart from the skeleton's rms_norm_eps (float32
//     epsilon), so the golden's config sets mla_rms_norm_eps to the eps the module has.
//   - Router dtype.  transformers computes router logits, sigmoid scores and weights in float32
//     whatever the module's dtype; the seed's router ran in the model dtype; ablate in the
//     backend's scalar.  In these float tests all three agree.
//   - Group masking.  ablate masks the experts of dropped groups with -inf before top-k, as
//     transformers 5.x and DeepSeek-V3 do; transformers 4.x used 0, which chooses differently
//     once a negative e_score_correction_bias pushes a kept choice score below 0.  The goldens
//     draw the bias from [0, 0.05), where the two agree, so files from either version hold.
//   - Expert storage.  transformers 5.x fuses the routed experts into experts.gate_up_proj
//     [E, 2I, H] (gate rows first) and experts.down_proj [E, H, I]; ablate keeps one Linear per
//     expert under the hub checkpoints' names (experts.<e>.gate_proj.weight, ...), which
//     transformers converts on load; the script splits the fused tensors into those names.
//   - Randomness.  PyTorch's random streams cannot be reproduced, so the goldens use no dropout
//     and no router noise: attention in eval mode, the seed MoE in training mode (its aux loss
//     on) with router_noise_std = 0 and expert dropout 0.
//   - The seed's unmasked DeepSeek wrapper added an all-ones mask to the scores, a constant
//     shift softmax ignores: NonCausalMLA ("mla-noncausal").
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <ablate/ablate.hpp>
#include <ablate/io/io.hpp>

#include "io_test_util.hpp"

namespace {

namespace fs = std::filesystem;
namespace io = ablate::io;
using namespace ablate;
using json = nlohmann::json;
using F = CPUBackend<float>;

constexpr double kTolerance = 1e-5;
// Experts and top-k of the MoE blocks the goldens use (compile-time parameters of MoE<E, K>).
constexpr std::size_t kExperts = 8, kTopK = 2;

// ---------------------------------------------------------------------------------------------
// The comparison.

// ||actual - reference||_2 / ||reference||_2, or ||actual||_2 when the reference is all zeros.
double relative_error(const std::vector<double>& actual, const std::vector<double>& reference) {
  double diff = 0, ref = 0, act = 0;
  for (std::size_t i = 0; i < actual.size(); ++i) {
    diff += (actual[i] - reference[i]) * (actual[i] - reference[i]);
    ref += reference[i] * reference[i];
    act += actual[i] * actual[i];
  }
  return ref > 0 ? std::sqrt(diff / ref) : std::sqrt(act);
}

struct Comparison {
  std::string tensor;
  double error = 0;
  bool ok() const { return error < kTolerance; }  // false for NaN too
};

struct ParityReport {
  std::string block, module;
  std::vector<Comparison> compared;
  std::vector<std::string> problems;  // missing / extra / misshapen tensors, routing

  std::vector<std::string> failures() const {
    std::vector<std::string> out;
    for (const Comparison& c : compared)
      if (!c.ok()) out.push_back(c.tensor);
    return out;
  }
  bool passed() const { return problems.empty() && failures().empty() && !compared.empty(); }
  const Comparison* find(const std::string& tensor) const {
    for (const Comparison& c : compared)
      if (c.tensor == tensor) return &c;
    return nullptr;
  }
  const Comparison* worst() const {
    const Comparison* w = nullptr;
    for (const Comparison& c : compared)
      if (w == nullptr || !(c.error <= w->error)) w = &c;
    return w;
  }
  std::string problem_text() const {
    std::string s;
    for (const auto& p : problems) s += (s.empty() ? "" : "; ") + p;
    return s;
  }
};

// What a golden file's metadata says about its block.
struct GoldenSpec {
  std::string block, prefix, module;
  ModelConfig cfg;
  std::size_t batch = 0, seq = 0, experts = 0, top_k = 0;
  bool training = false;
};

json parse_json_metadata(const io::SafetensorsReader& r, const char* key) {
  const std::string* text = r.metadata_value(key);
  require(text != nullptr, r.source(), ": no metadata '", key, "' (not a golden file?)");
  json j = json::parse(*text, nullptr, /*allow_exceptions=*/false);
  require(!j.is_discarded() && j.is_object(), r.source(), ": metadata '", key,
          "' is not a JSON object");
  return j;
}

std::size_t json_size(const io::SafetensorsReader& r, const json& run, const char* key,
                      bool required = true) {
  const auto it = run.find(key);
  if (it == run.end()) {
    require(!required, r.source(), ": golden.run has no '", key, "'");
    return 0;
  }
  require(it->is_number_unsigned(), r.source(), ": golden.run '", key,
          "' must be a non-negative integer, got ", it->dump());
  return it->get<std::size_t>();
}

GoldenSpec read_spec(const io::SafetensorsReader& r) {
  GoldenSpec s;
  for (auto [key, field] : {std::pair{"golden.block", &s.block}, std::pair{"golden.prefix", &s.prefix}}) {
    const std::string* v = r.metadata_value(key);
    require(v != nullptr && !v->empty(), r.source(), ": no metadata '", key, "' (not a golden file?)");
    *field = *v;
  }
  if (const std::string* m = r.metadata_value("golden.module")) s.module = *m;
  try {
    s.cfg = io::model_config_from_json(parse_json_metadata(r, "golden.config"));
  } catch (const invalid_input& e) {
    if (std::string(e.what()).starts_with(r.source())) throw;
    throw invalid_input(r.source() + ": golden.config: " + e.what());
  }
  const json run = parse_json_metadata(r, "golden.run");
  s.batch = json_size(r, run, "batch");
  s.seq = json_size(r, run, "seq");
  require(s.batch > 0 && s.seq > 0, r.source(), ": golden.run: batch and seq must be > 0");
  s.experts = json_size(r, run, "n_routed_experts", false);
  s.top_k = json_size(r, run, "num_experts_per_tok", false);
  if (const auto it = run.find("training"); it != run.end()) {
    require(it->is_boolean(), r.source(), ": golden.run 'training' must be a boolean");
    s.training = it->get<bool>();
  }
  return s;
}

// Builds the block a golden file names and calls f(block).  Throws for an unknown block or an
// MoE shape this test was not compiled for.
template <class B, class Fn>
void with_block(const GoldenSpec& s, ParameterStore<B>& store, Initializer& init,
                const std::string& source, Fn&& f) {
  const auto& cfg = s.cfg;
  const auto& prefix = s.prefix;
  if (s.block == "moe-glm4" || s.block == "moe-seed") {
    require(s.experts == kExperts && s.top_k == kTopK, source, ": golden.run has ", s.experts,
            " experts, top-", s.top_k, "; this test compares MoE blocks of ", kExperts,
            " experts, top-", kTopK);
  }
  if (s.block == "mla") {
    auto block = MLA::make<B>(store, init, prefix, cfg);
    f(block);
  } else if (s.block == "mla-noncausal") {
    auto block = NonCausalMLA::make<B>(store, init, prefix, cfg);
    f(block);
  } else if (s.block == "mha") {
    auto block = MHA::make<B>(store, init, prefix, cfg);
    f(block);
  } else if (s.block == "gated-mlp") {
    auto block = GatedMLP::make<B>(store, init, prefix, cfg);
    f(block);
  } else if (s.block == "rms") {
    auto block = RMS::make<B>(store, init, prefix, cfg);
    f(block);
  } else if (s.block == "moe-glm4") {
    auto block = Glm4MoE<kExperts, kTopK>::make<B>(store, init, prefix, cfg);
    f(block);
  } else if (s.block == "moe-seed") {
    auto block = SeedMoE<kExperts, kTopK>::make<B>(store, init, prefix, cfg);
    f(block);
  } else {
    throw invalid_input(source + ": unknown golden.block '" + s.block +
                        "' (known: mla, mla-noncausal, mha, gated-mlp, rms, moe-glm4, moe-seed)");
  }
}

template <class Block, class Tensor>
void block_forward(Block& block, Tensor& y, const Tensor& x, const PassContext& ctx) {
  if constexpr (requires { block.forward(y, x, ctx); }) {
    block.forward(y, x, ctx);
  } else {
    block.forward(y, x);
  }
}

template <class Block>
constexpr bool has_bias_buffer = requires(Block& b) { b.router().e_score_correction_bias(); };
template <class Block>
constexpr bool is_moe = requires(const Block& b) { b.routing_indices(); };

// Each token's chosen experts, ascending (the order within a token does not matter).
template <class Indices>
std::vector<std::int64_t> sorted_routing(const Indices& idx, std::size_t k) {
  std::vector<std::int64_t> out(idx.begin(), idx.end());
  for (std::size_t i = 0; i + k <= out.size(); i += k)
    std::sort(out.begin() + static_cast<std::ptrdiff_t>(i),
              out.begin() + static_cast<std::ptrdiff_t>(i + k));
  return out;
}

// Runs `block` (float) on the golden file and compares; see the top of the file.
template <class Block>
void compare_block(Block& block, ParameterStore<F>& store, const io::SafetensorsReader& r,
                   const GoldenSpec& s, ParityReport& report) {
  const std::size_t n = s.batch * s.seq, d = s.cfg.hidden_size;
  const std::vector<std::size_t> activation{s.batch, s.seq, d};
  const std::string bias_name = s.prefix + ".gate.e_score_correction_bias";

  // The inventory: what the file must hold, and nothing else.
  std::set<std::string> expected{"input", "grad_output", "output", "grad_input"};
  for (const auto& p : store) {
    expected.insert(p.name);
    expected.insert("grad." + p.name);
  }
  if constexpr (has_bias_buffer<Block>) expected.insert(bias_name);
  if constexpr (is_moe<Block>) expected.insert("routing.indices");
  const bool has_aux = r.find("aux_loss") != nullptr;
  for (const io::TensorInfo& info : r.tensors())
    if (expected.count(info.name) == 0 && !(is_moe<Block> && info.name == "aux_loss"))
      report.problems.push_back("unexpected tensor '" + info.name + "'");
  for (const std::string& name : expected)
    if (r.find(name) == nullptr) report.problems.push_back("missing tensor '" + name + "'");
  if (!report.problems.empty()) return;

  auto load = [&](const std::string& name,
                  const std::vector<std::size_t>& shape) -> std::optional<std::vector<double>> {
    const io::TensorInfo& info = r.at(name);
    if (info.shape != shape) {
      report.problems.push_back("tensor '" + name + "' has shape " + io::detail::shape_string(info.shape) +
                                ", the block expects " + io::detail::shape_string(shape));
      return std::nullopt;
    }
    return r.read<double>(name);
  };
  for (auto& p : store)
    if (const auto v = load(p.name, p.shape)) F::from_host(p.value, *v);
  if constexpr (has_bias_buffer<Block>) {
    auto& bias = block.router().e_score_correction_bias();
    if (const auto v = load(bias_name, {static_cast<std::size_t>(bias.size())})) F::from_host(bias, *v);
  }
  const auto input = load("input", activation), grad_output = load("grad_output", activation);
  const auto output = load("output", activation), grad_input = load("grad_input", activation);
  std::vector<std::vector<double>> grads;
  for (const auto& p : store)
    if (auto g = load("grad." + p.name, p.shape)) grads.push_back(std::move(*g));
  if (!report.problems.empty()) return;

  auto compare = [&](const std::string& name, const F::Tensor& actual, const std::vector<double>& ref) {
    report.compared.push_back({name, relative_error(F::to_host(actual), ref)});
  };
  const auto rows = static_cast<Eigen::Index>(n), cols = static_cast<Eigen::Index>(d);
  F::Tensor x(rows, cols), dy(rows, cols), y, dx;
  F::from_host(x, *input);
  F::from_host(dy, *grad_output);

  RandomStream rng(1);  // nothing should draw from it: no dropout, no router noise
  const PassContext ctx{s.training, s.batch, s.seq, &rng, 1.0};
  block_forward(block, y, x, ctx);
  compare("output", y, *output);

  if constexpr (is_moe<Block>) {
    const std::size_t k = Block::top_k;
    const std::vector<std::size_t> routing_shape{n, k};
    if (r.at("routing.indices").shape != routing_shape) {
      report.problems.push_back("tensor 'routing.indices' has shape " +
                                io::detail::shape_string(r.at("routing.indices").shape) +
                                ", the block expects " + io::detail::shape_string(routing_shape));
    } else {
      const std::vector<std::int64_t> want = r.read<std::int64_t>("routing.indices");
      const std::vector<std::int64_t> got = sorted_routing(block.routing_indices(), k);
      for (std::size_t t = 0; t < n; ++t) {
        if (!std::equal(got.begin() + static_cast<std::ptrdiff_t>(t * k),
                        got.begin() + static_cast<std::ptrdiff_t>((t + 1) * k),
                        want.begin() + static_cast<std::ptrdiff_t>(t * k))) {
          std::ostringstream msg;
          msg << "routing differs at token " << t << ": ablate chose";
          for (std::size_t j = 0; j < k; ++j) msg << ' ' << got[t * k + j];
          msg << ", the reference";
          for (std::size_t j = 0; j < k; ++j) msg << ' ' << want[t * k + j];
          report.problems.push_back(msg.str());
          break;
        }
      }
    }
    if (has_aux) {
      if (const auto ref = load("aux_loss", {1}))
        report.compared.push_back({"aux_loss", relative_error({block.aux_loss()}, *ref)});
    }
  }

  store.zero_grad();
  block.backward(dx, dy);
  compare("grad_input", dx, *grad_input);
  std::size_t i = 0;
  for (const auto& p : store) compare("grad." + p.name, p.grad, grads[i++]);
}

// Loads a golden file, builds its block in float and compares.  Throws invalid_input (or
// data::io_error) for a file that cannot be read or names no block this test knows.
ParityReport run_parity(const fs::path& file) {
  const auto reader = io::SafetensorsReader::open(file);
  const GoldenSpec spec = read_spec(reader);
  ParityReport report;
  report.block = spec.block;
  report.module = spec.module;
  ParameterStore<F> store;
  Initializer init(1, 0.02, InitScheme::Normal);  // every value is overwritten from the file
  with_block<F>(spec, store, init, reader.source(),
                [&](auto& block) { compare_block(block, store, reader, spec, report); });
  return report;
}

std::vector<fs::path> golden_files(const fs::path& dir) {
  std::vector<fs::path> files;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && e.path().extension() == ".safetensors") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  return files;
}

// ---------------------------------------------------------------------------------------------
// Synthetic golden files from ablate's own blocks.

struct TensorData {
  std::vector<std::size_t> shape;
  std::vector<double> values;        // F32 in the file
  std::vector<std::int64_t> indices;  // I64 in the file (routing.indices)
};

struct GoldenData {
  std::map<std::string, TensorData> tensors;
  std::map<std::string, std::string> metadata;

  void write(const fs::path& path) const {
    io::SafetensorsWriter w;
    for (const auto& [key, value] : metadata) w.set_metadata(key, value);
    for (const auto& [name, t] : tensors) {
      if (t.indices.empty()) w.add(name, io::Dtype::F32, t.shape, t.values);
      else w.add(name, io::Dtype::I64, t.shape, t.indices);
    }
    w.write(path);
  }
};

// Uniform(low, high) values.
void fill_uniform(F::Tensor& t, std::uint64_t key, double low, double high) {
  for (Eigen::Index i = 0; i < t.size(); ++i)
    t.data()[i] = static_cast<float>(low + (high - low) * uniform01(key, static_cast<std::uint64_t>(i)));
}

std::vector<double> host(const F::Tensor& t) { return F::to_host(t); }

struct SyntheticCase {
  std::string name, block, prefix;
  ModelConfig cfg;
  bool training = false;
};

ModelConfig small_config() {
  ModelConfig c;
  c.hidden_size = 16;
  c.num_attention_heads = 2;
  c.hidden_dropout = 0.0;
  c.attention_dropout = 0.0;
  c.max_position_embeddings = 5;
  return c;
}

std::vector<SyntheticCase> synthetic_cases() {
  std::vector<SyntheticCase> cases;
  auto mla = [](std::size_t q_lora, std::size_t nope, bool bias) {
    ModelConfig c = small_config();
    c.q_lora_rank = q_lora;
    c.kv_lora_rank = 8;
    c.qk_rope_head_dim = 4;
    c.qk_nope_head_dim = nope;
    c.v_head_dim = 6;
    c.attention_bias = bias;
    return c;
  };
  cases.push_back({"mla_q0_nope0", "mla", "self_attn", mla(0, 0, false)});
  cases.push_back({"mla_q6_nope4", "mla", "self_attn", mla(6, 4, true)});
  cases.push_back({"mla_noncausal", "mla-noncausal", "self_attn", mla(6, 0, true)});
  cases.push_back({"mha", "mha", "self_attn", small_config()});
  ModelConfig mlp = small_config();
  mlp.intermediate_size = 24;
  cases.push_back({"gated_mlp", "gated-mlp", "mlp", mlp});
  ModelConfig rms = small_config();
  rms.rms_norm_eps = 1e-6;
  cases.push_back({"rms", "rms", "input_layernorm", rms});
  ModelConfig moe = small_config();
  moe.hidden_size = 8;
  moe.moe_intermediate_size = 6;
  moe.n_shared_experts = 1;
  moe.n_group = 4;
  moe.topk_group = 2;
  moe.routed_scaling_factor = 2.5;
  cases.push_back({"glm4_moe", "moe-glm4", "mlp", moe});
  ModelConfig seed = moe;
  seed.router_aux_loss_coef = 0.01;
  seed.router_noise_std = 0.0;
  cases.push_back({"seed_moe", "moe-seed", "mlp", seed, /*training=*/true});
  return cases;
}

// A golden file of ablate's own float block, in the format make_golden.py writes.
GoldenData make_synthetic(const SyntheticCase& c, std::uint64_t seed) {
  constexpr std::size_t batch = 2, seq = 5;
  GoldenSpec spec;
  spec.block = c.block;
  spec.prefix = c.prefix;
  spec.cfg = c.cfg;
  spec.batch = batch;
  spec.seq = seq;
  spec.training = c.training;
  const bool moe = c.block.starts_with("moe");
  spec.experts = moe ? kExperts : 0;
  spec.top_k = moe ? kTopK : 0;

  GoldenData g;
  json run{{"batch", batch}, {"seq", seq}, {"training", c.training},
           {"n_routed_experts", spec.experts}, {"num_experts_per_tok", spec.top_k}};
  g.metadata = {{"format", "pt"},
                {"golden.case", c.name},
                {"golden.module", "ablate (synthetic)"},
                {"golden.block", c.block},
                {"golden.prefix", c.prefix},
                {"golden.config", io::to_json(c.cfg).dump()},
                {"golden.run", run.dump()}};

  ParameterStore<F> store;
  Initializer init(seed, 0.02, InitScheme::Normal);
  with_block<F>(spec, store, init, c.name, [&](auto& block) {
    using Block = std::remove_reference_t<decltype(block)>;
    std::uint64_t key = mix64(seed);
    for (auto& p : store) {
      const double bound = 1.0 / std::sqrt(static_cast<double>(p.cols()));
      if (p.role == ParamRole::Norm) fill_uniform(p.value, ++key, 0.8, 1.2);
      else if (p.role == ParamRole::Bias) fill_uniform(p.value, ++key, -0.2, 0.2);
      else fill_uniform(p.value, ++key, -bound, bound);
    }
    if constexpr (has_bias_buffer<Block>)
      fill_uniform(block.router().e_score_correction_bias(), ++key, 0.0, 0.05);

    const auto rows = static_cast<Eigen::Index>(batch * seq);
    const auto cols = static_cast<Eigen::Index>(c.cfg.hidden_size);
    F::Tensor x(rows, cols), dy(rows, cols), y, dx;
    RandomStream rng(1);
    const PassContext ctx{c.training, batch, seq, &rng, 1.0};
    fill_uniform(x, ++key, -1.0, 1.0);
    block_forward(block, y, x, ctx);
    fill_uniform(dy, ++key, -1.0, 1.0);
    store.zero_grad();
    block.backward(dx, dy);

    const std::vector<std::size_t> activation{batch, seq, c.cfg.hidden_size};
    g.tensors["input"] = {activation, host(x), {}};
    g.tensors["grad_output"] = {activation, host(dy), {}};
    g.tensors["output"] = {activation, host(y), {}};
    g.tensors["grad_input"] = {activation, host(dx), {}};
    for (const auto& p : store) {
      g.tensors[p.name] = {p.shape, host(p.value), {}};
      g.tensors["grad." + p.name] = {p.shape, host(p.grad), {}};
    }
    if constexpr (has_bias_buffer<Block>) {
      const auto& bias = block.router().e_score_correction_bias();
      g.tensors[c.prefix + ".gate.e_score_correction_bias"] = {
          {static_cast<std::size_t>(bias.size())}, host(bias), {}};
    }
    if constexpr (is_moe<Block>) {
      g.tensors["routing.indices"] = {{batch * seq, Block::top_k}, {},
                                      sorted_routing(block.routing_indices(), Block::top_k)};
      if (c.training) g.tensors["aux_loss"] = {{1}, {block.aux_loss()}, {}};
    }
  });
  return g;
}

double norm_of(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x * x;
  return std::sqrt(s);
}

const SyntheticCase& synthetic_case(const std::string& name) {
  static const std::vector<SyntheticCase> cases = synthetic_cases();
  for (const auto& c : cases)
    if (c.name == name) return c;
  throw invalid_input("no synthetic case " + name);
}

}  // namespace

TEST_CASE("reference parity: ablate blocks match the golden files of HF transformers and the seed") {
  const fs::path dir = fs::path(ABLATE_TEST_DATA_DIR) / "golden";
  const std::vector<fs::path> files = golden_files(dir);
  if (files.empty()) {
    MESSAGE("SKIPPED: no golden files in " << dir.string()
                                           << " (they are written by tests/reference/make_golden.py, "
                                              "which needs PyTorch and transformers; see "
                                              "tests/reference/README.md)");
    return;
  }
  for (const fs::path& file : files) {
    CAPTURE(file.filename().string());
    ParityReport report;
    try {
      report = run_parity(file);
    } catch (const std::exception& e) {
      FAIL_CHECK(e.what());
      continue;
    }
    const auto reader = io::SafetensorsReader::open(file);
    for (const char* key : {"golden.torch_version", "golden.transformers_version"})
      CHECK_MESSAGE(reader.metadata_value(key) != nullptr, "no " << key << " in the metadata");
    CHECK_MESSAGE(report.problems.empty(), report.problem_text());
    for (const Comparison& c : report.compared)
      CHECK_MESSAGE(c.ok(), c.tensor << ": relative error " << c.error << " (tolerance "
                                     << kTolerance << ")");
    if (const Comparison* w = report.worst())
      MESSAGE(file.filename().string()
              << " (" << report.module << " -> ablate " << report.block << "): "
              << report.compared.size() << " tensors compared, worst relative error " << w->error
              << " (" << w->tensor << ")");
  }
}

TEST_CASE("reference parity: golden files written from ablate's own blocks pass the comparison bit for bit") {
  io_test::TempDir dir;
  std::uint64_t seed = 11;
  for (const SyntheticCase& c : synthetic_cases()) {
    CAPTURE(c.name);
    const fs::path file = dir / (c.name + ".safetensors");
    const GoldenData golden = make_synthetic(c, ++seed);
    golden.write(file);
    const ParityReport report = run_parity(file);
    CHECK_MESSAGE(report.problems.empty(), report.problem_text());
    CHECK(report.failures().empty());
    CHECK(report.passed());
    // Output, input gradient and one gradient per parameter (plus the aux loss).
    std::size_t params = 0;
    for (const auto& [name, t] : golden.tensors) params += name.starts_with("grad.");
    CHECK(report.compared.size() == 2 + params + (c.block == "moe-seed" ? 1 : 0));
    // The same float computation on the loaded weights and buffers: any weight loaded into the
    // wrong place, transposed or not at all would show.  (The aux loss is a double that the
    // file holds as F32.)
    for (const Comparison& cmp : report.compared) {
      CAPTURE(cmp.tensor);
      if (cmp.tensor == "aux_loss") CHECK(cmp.error < 1e-7);
      else CHECK(cmp.error == 0);
    }
  }
}

TEST_CASE("reference parity: perturbed, incomplete or mismatched golden files are rejected") {
  io_test::TempDir dir;
  const GoldenData mla = make_synthetic(synthetic_case("mla_q6_nope4"), 5);
  const GoldenData moe = make_synthetic(synthetic_case("seed_moe"), 6);
  const GoldenData glm4 = make_synthetic(synthetic_case("glm4_moe"), 7);
  int counter = 0;
  auto run = [&](const GoldenData& g) {
    const fs::path file = dir / ("case" + std::to_string(counter++) + ".safetensors");
    g.write(file);
    return run_parity(file);
  };
  // Moves one element by 1e-3 of the tensor's norm (or by 1e-3 where it is all zeros, e.g. an
  // expert no token chose): far outside the 1e-5 tolerance.
  auto perturbed = [](GoldenData g, const std::string& tensor, std::size_t element = 3) {
    auto& v = g.tensors.at(tensor).values;
    v.at(element) += 1e-3 * std::max(norm_of(v), 1.0);
    return g;
  };

  REQUIRE(run(mla).passed());
  REQUIRE(run(moe).passed());
  REQUIRE(run(glm4).passed());

  SUBCASE("a perturbed gradient, output or aux loss is the one tensor that fails") {
    for (const std::string tensor :
         {"grad.self_attn.kv_b_proj.weight", "grad.self_attn.q_a_layernorm.weight",
          "grad.self_attn.o_proj.bias", "grad_input", "output"}) {
      CAPTURE(tensor);
      const ParityReport r = run(perturbed(mla, tensor));
      CHECK(r.problems.empty());
      CHECK(r.failures() == std::vector<std::string>{tensor});
      const Comparison* c = r.find(tensor);
      REQUIRE(c != nullptr);
      CHECK(c->error > 5e-4);
    }
    for (const std::string tensor : {"grad.mlp.experts.5.down_proj.weight", "grad.mlp.gate.weight"}) {
      CAPTURE(tensor);
      const ParityReport r = run(perturbed(moe, tensor, 0));
      CHECK(r.failures() == std::vector<std::string>{tensor});
    }
    GoldenData aux = moe;
    aux.tensors.at("aux_loss").values[0] *= 1.001;
    CHECK(run(aux).failures() == std::vector<std::string>{"aux_loss"});
  }

  SUBCASE("a perturbed weight or input moves the output and the gradients") {
    for (const std::string tensor : {"self_attn.kv_a_proj_with_mqa.weight",
                                     "self_attn.kv_a_layernorm.weight", "input", "grad_output"}) {
      CAPTURE(tensor);
      const ParityReport r = run(perturbed(mla, tensor));
      CHECK_FALSE(r.passed());
      CHECK(r.failures().size() >= 2);
    }
    // The buffer of the GLM4 router takes part too: raising one bias moves tokens to its expert.
    GoldenData g = glm4;
    for (double& b : g.tensors.at("mlp.gate.e_score_correction_bias").values) b = 0;
    g.tensors.at("mlp.gate.e_score_correction_bias").values[1] = 10.0;
    const ParityReport r = run(g);
    CHECK_FALSE(r.passed());
    CHECK(r.problem_text().find("routing differs at token") != std::string::npos);
  }

  SUBCASE("missing, extra and misshapen tensors are reported by name") {
    GoldenData g = mla;
    g.tensors.erase("grad.self_attn.o_proj.weight");
    ParityReport r = run(g);
    CHECK_FALSE(r.passed());
    CHECK(r.problem_text() == "missing tensor 'grad.self_attn.o_proj.weight'");

    g = mla;
    g.tensors["self_attn.q_proj.weight"] = g.tensors.at("self_attn.q_b_proj.weight");
    r = run(g);
    CHECK(r.problem_text() == "unexpected tensor 'self_attn.q_proj.weight'");

    g = glm4;
    g.tensors.erase("mlp.gate.e_score_correction_bias");
    CHECK(run(g).problem_text() == "missing tensor 'mlp.gate.e_score_correction_bias'");

    g = mla;
    auto& w = g.tensors.at("self_attn.o_proj.weight");
    std::swap(w.shape[0], w.shape[1]);  // stored transposed: same element count
    r = run(g);
    CHECK_FALSE(r.passed());
    CHECK(r.problem_text() == "tensor 'self_attn.o_proj.weight' has shape [12, 16], the block "
                              "expects [16, 12]");
  }

  SUBCASE("different routing is reported before any number") {
    GoldenData g = moe;
    auto& idx = g.tensors.at("routing.indices").indices;  // token 2 holds entries 4 and 5
    std::int64_t other = 0;
    while (other == idx[4] || other == idx[5]) ++other;
    idx[5] = other;
    std::sort(idx.begin() + 4, idx.begin() + 6);
    const ParityReport r = run(g);
    CHECK(r.problem_text().find("routing differs at token 2: ablate chose") != std::string::npos);
  }

  SUBCASE("a mismatched configuration or an unreadable file throws a clear error") {
    GoldenData g = moe;
    g.metadata["golden.run"] =
        R"({"batch": 2, "seq": 5, "training": true, "n_routed_experts": 4, "num_experts_per_tok": 2})";
    CHECK_THROWS_WITH_AS(run(g),
                         doctest::Contains("golden.run has 4 experts, top-2; this test compares MoE "
                                           "blocks of 8 experts, top-2"),
                         invalid_input);

    g = mla;
    g.metadata["golden.block"] = "mla-yarn";
    CHECK_THROWS_WITH_AS(run(g), doctest::Contains("unknown golden.block 'mla-yarn'"), invalid_input);

    g = mla;
    g.metadata.erase("golden.config");
    CHECK_THROWS_WITH_AS(run(g), doctest::Contains("no metadata 'golden.config' (not a golden file?)"),
                         invalid_input);

    g = mla;
    g.metadata["golden.config"] = R"({"hidden_size": 16, "q_lora_ranks": 6})";
    CHECK_THROWS_WITH_AS(
        run(g), doctest::Contains("golden.config: ModelConfig JSON: unknown field 'q_lora_ranks'"),
        invalid_input);

    // Another configuration builds a block of other shapes: the weights that depend on it are
    // reported misshapen.
    g = mla;
    json cfg = json::parse(g.metadata.at("golden.config"));
    cfg["qk_nope_head_dim"] = 0;
    g.metadata["golden.config"] = cfg.dump();
    const ParityReport r = run(g);
    CHECK_FALSE(r.passed());
    CHECK(r.problem_text().find(
              "'self_attn.q_b_proj.weight' has shape [16, 6], the block expects [8, 6]") !=
          std::string::npos);

    const fs::path file = dir / "truncated.safetensors";
    const std::string bytes = [&] {
      io::SafetensorsWriter w;
      w.set_metadata("golden.block", "mla");
      w.add("input", io::Dtype::F32, {2}, std::vector<double>{1, 2});
      return w.serialize();
    }();
    {
      std::ofstream out(file, std::ios::binary);
      out.write(bytes.data(), static_cast<std::streamsize>(bytes.size() - 3));
    }
    CHECK_THROWS_AS(run_parity(file), invalid_input);
    CHECK_THROWS_AS(run_parity(dir / "no-such.safetensors"), std::exception);
  }
}
