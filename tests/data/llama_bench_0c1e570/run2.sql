CREATE TABLE IF NOT EXISTS llama_bench (
  build_commit TEXT,
  build_number INTEGER,
  cpu_info TEXT,
  gpu_info TEXT,
  backends TEXT,
  model_filename TEXT,
  model_type TEXT,
  model_size INTEGER,
  model_n_params INTEGER,
  n_batch INTEGER,
  n_ubatch INTEGER,
  n_threads INTEGER,
  cpu_mask TEXT,
  cpu_strict INTEGER,
  poll INTEGER,
  type_k TEXT,
  type_v TEXT,
  n_gpu_layers INTEGER,
  n_cpu_moe INTEGER,
  split_mode TEXT,
  main_gpu INTEGER,
  no_kv_offload INTEGER,
  flash_attn INTEGER,
  devices TEXT,
  tensor_split TEXT,
  tensor_buft_overrides TEXT,
  load_mode TEXT,
  lazy_mode TEXT,
  embeddings INTEGER,
  no_op_offload INTEGER,
  no_host INTEGER,
  repack INTEGER,
  fit_target INTEGER,
  fit_min_ctx INTEGER,
  n_prompt INTEGER,
  n_gen INTEGER,
  n_depth INTEGER,
  test_time TEXT,
  avg_ns INTEGER,
  stddev_ns INTEGER,
  avg_ts REAL,
  stddev_ts REAL
);

INSERT INTO llama_bench (build_commit, build_number, cpu_info, gpu_info, backends, model_filename, model_type, model_size, model_n_params, n_batch, n_ubatch, n_threads, cpu_mask, cpu_strict, poll, type_k, type_v, n_gpu_layers, n_cpu_moe, split_mode, main_gpu, no_kv_offload, flash_attn, devices, tensor_split, tensor_buft_overrides, load_mode, lazy_mode, embeddings, no_op_offload, no_host, repack, fit_target, fit_min_ctx, n_prompt, n_gen, n_depth, test_time, avg_ns, stddev_ns, avg_ts, stddev_ts) VALUES ('0c1e570', '0', 'Intel(R) Xeon(R) Processor', '', 'CPU', '/tmp/lbfix/model.gguf', 'gemma3 270M Q4_K - Medium', '246587904', '268098176', '2048', '512', '2', '0x0', '0', '50', 'f16', 'f16', '0', '0', 'layer', '0', '0', '0', 'auto', '0.00', 'none', 'auto', 'auto', '0', '0', '0', '0', '0', '0', '16', '0', '0', '2026-12-02T04:56:34Z', '2655252615', '803355604', '6.314817', '1.910569');
INSERT INTO llama_bench (build_commit, build_number, cpu_info, gpu_info, backends, model_filename, model_type, model_size, model_n_params, n_batch, n_ubatch, n_threads, cpu_mask, cpu_strict, poll, type_k, type_v, n_gpu_layers, n_cpu_moe, split_mode, main_gpu, no_kv_offload, flash_attn, devices, tensor_split, tensor_buft_overrides, load_mode, lazy_mode, embeddings, no_op_offload, no_host, repack, fit_target, fit_min_ctx, n_prompt, n_gen, n_depth, test_time, avg_ns, stddev_ns, avg_ts, stddev_ts) VALUES ('0c1e570', '0', 'Intel(R) Xeon(R) Processor', '', 'CPU', '/tmp/lbfix/model.gguf', 'gemma3 270M Q4_K - Medium', '246587904', '268098176', '2048', '512', '2', '0x0', '0', '50', 'f16', 'f16', '0', '0', 'layer', '0', '0', '0', 'auto', '0.00', 'none', 'auto', 'auto', '0', '0', '0', '0', '0', '0', '0', '4', '0', '2026-12-02T04:56:41Z', '1199299790', '230558406', '3.398072', '0.653260');
INSERT INTO llama_bench (build_commit, build_number, cpu_info, gpu_info, backends, model_filename, model_type, model_size, model_n_params, n_batch, n_ubatch, n_threads, cpu_mask, cpu_strict, poll, type_k, type_v, n_gpu_layers, n_cpu_moe, split_mode, main_gpu, no_kv_offload, flash_attn, devices, tensor_split, tensor_buft_overrides, load_mode, lazy_mode, embeddings, no_op_offload, no_host, repack, fit_target, fit_min_ctx, n_prompt, n_gen, n_depth, test_time, avg_ns, stddev_ns, avg_ts, stddev_ts) VALUES ('0c1e570', '0', 'Intel(R) Xeon(R) Processor', '', 'CPU', '/tmp/lbfix/model.gguf', 'gemma3 270M Q4_K - Medium', '246587904', '268098176', '2048', '512', '2', '0x0', '0', '50', 'f16', 'f16', '0', '0', 'layer', '0', '0', '0', 'auto', '0.00', 'none', 'auto', 'auto', '0', '0', '0', '0', '0', '0', '8', '2', '0', '2026-12-02T04:56:44Z', '1047710581', '288194499', '9.919910', '2.728677');
INSERT INTO llama_bench (build_commit, build_number, cpu_info, gpu_info, backends, model_filename, model_type, model_size, model_n_params, n_batch, n_ubatch, n_threads, cpu_mask, cpu_strict, poll, type_k, type_v, n_gpu_layers, n_cpu_moe, split_mode, main_gpu, no_kv_offload, flash_attn, devices, tensor_split, tensor_buft_overrides, load_mode, lazy_mode, embeddings, no_op_offload, no_host, repack, fit_target, fit_min_ctx, n_prompt, n_gen, n_depth, test_time, avg_ns, stddev_ns, avg_ts, stddev_ts) VALUES ('0c1e570', '0', 'Intel(R) Xeon(R) Processor', '', 'CPU', '/tmp/lbfix/model.gguf', 'gemma3 270M Q4_K - Medium', '246587904', '268098176', '2048', '512', '2', '0x0', '0', '50', 'f16', 'f16', '0', '0', 'layer', '0', '0', '0', 'auto', '0.00', 'none', 'auto', 'auto', '0', '0', '0', '0', '0', '0', '16', '0', '8', '2026-12-02T04:56:47Z', '323402032', '11151020', '49.503452', '1.706897');
INSERT INTO llama_bench (build_commit, build_number, cpu_info, gpu_info, backends, model_filename, model_type, model_size, model_n_params, n_batch, n_ubatch, n_threads, cpu_mask, cpu_strict, poll, type_k, type_v, n_gpu_layers, n_cpu_moe, split_mode, main_gpu, no_kv_offload, flash_attn, devices, tensor_split, tensor_buft_overrides, load_mode, lazy_mode, embeddings, no_op_offload, no_host, repack, fit_target, fit_min_ctx, n_prompt, n_gen, n_depth, test_time, avg_ns, stddev_ns, avg_ts, stddev_ts) VALUES ('0c1e570', '0', 'Intel(R) Xeon(R) Processor', '', 'CPU', '/tmp/lbfix/model.gguf', 'gemma3 270M Q4_K - Medium', '246587904', '268098176', '2048', '512', '2', '0x0', '0', '50', 'f16', 'f16', '0', '0', 'layer', '0', '0', '0', 'auto', '0.00', 'none', 'auto', 'auto', '0', '0', '0', '0', '0', '0', '0', '4', '8', '2026-12-02T04:56:49Z', '1243158599', '724126856', '3.874991', '2.257142');
INSERT INTO llama_bench (build_commit, build_number, cpu_info, gpu_info, backends, model_filename, model_type, model_size, model_n_params, n_batch, n_ubatch, n_threads, cpu_mask, cpu_strict, poll, type_k, type_v, n_gpu_layers, n_cpu_moe, split_mode, main_gpu, no_kv_offload, flash_attn, devices, tensor_split, tensor_buft_overrides, load_mode, lazy_mode, embeddings, no_op_offload, no_host, repack, fit_target, fit_min_ctx, n_prompt, n_gen, n_depth, test_time, avg_ns, stddev_ns, avg_ts, stddev_ts) VALUES ('0c1e570', '0', 'Intel(R) Xeon(R) Processor', '', 'CPU', '/tmp/lbfix/model.gguf', 'gemma3 270M Q4_K - Medium', '246587904', '268098176', '2048', '512', '2', '0x0', '0', '50', 'f16', 'f16', '0', '0', 'layer', '0', '0', '0', 'auto', '0.00', 'none', 'auto', 'auto', '0', '0', '0', '0', '0', '0', '8', '2', '8', '2026-12-02T04:56:52Z', '4425420470', '4246861466', '4.188189', '4.019202');
