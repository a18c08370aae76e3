// Writes a few valid safetensors files into the folder named on the command line: the seed
// corpus of fuzz_safetensors.  Usage: ablate_fuzz_seed_corpus <folder>
#include <ablate/ablate.hpp>
#include <ablate/io/io.hpp>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <folder>\n", argv[0]);
    return 2;
  }
  try {
    namespace io = ablate::io;
    const std::filesystem::path dir = argv[1];

    io::SafetensorsWriter empty;
    empty.write(dir / "empty.safetensors");

    io::SafetensorsWriter meta;
    meta.set_metadata("format", "pt");
    meta.set_metadata("note", "seed");
    meta.write(dir / "metadata.safetensors");

    io::SafetensorsWriter mixed;
    mixed.set_metadata("format", "pt");
    mixed.add("a.f64", io::Dtype::F64, {2}, std::vector<double>{1.5, -0.25});
    mixed.add("b.f32", io::Dtype::F32, {2, 2}, std::vector<float>{1, 2, 3, 4});
    mixed.add("c.bf16", io::Dtype::BF16, {3}, std::vector<float>{0.5f, -1, 3});
    mixed.add("d.f16", io::Dtype::F16, {1, 3}, std::vector<double>{0.1, 65504, -2});
    mixed.add("e.i64", io::Dtype::I64, {2}, std::vector<std::int64_t>{-1, 1});
    mixed.add("f.i32", io::Dtype::I32, {1}, std::vector<std::int32_t>{7});
    mixed.add("g.u8", io::Dtype::U8, {3}, std::vector<int>{0, 128, 255});
    mixed.add("h.bool", io::Dtype::BOOL, {2}, std::vector<int>{1, 0});
    mixed.add("i.scalar", io::Dtype::F32, {}, std::vector<float>{9});
    mixed.add("j.empty", io::Dtype::F16, {0, 2}, std::vector<float>{});
    mixed.add("j.empty64", io::Dtype::F64, {3, 0}, std::vector<double>{});
    mixed.add_raw("k.f8", io::Dtype::F8_E4M3, {2}, std::string("\x38\x7e", 2));
    mixed.write(dir / "mixed.safetensors");

    ablate::ModelConfig cfg;
    cfg.vocab_size = 5;
    cfg.hidden_size = 4;
    cfg.num_attention_heads = 1;
    cfg.num_hidden_layers = 1;
    cfg.intermediate_size = 4;
    cfg.max_position_embeddings = 4;
    cfg.moe_intermediate_size = 2;
    using Arch =
        ablate::Architecture<ablate::Attention<ablate::MHA>, ablate::FFN<ablate::Glm4MoE<2, 1>>,
                             ablate::Norm<ablate::RMS>>;
    ablate::Model<Arch, ablate::CPU> model(cfg, 1);
    io::save_weights(model, dir / "model.safetensors", {}, io::Dtype::BF16);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ablate_fuzz_seed_corpus: %s\n", e.what());
    return 1;
  }
  return 0;
}
