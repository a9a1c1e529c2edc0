// GatherRows: embedding lookup in a bf16 (or any 2- or 4-byte) table. Inside a
// compiled graph MindSpore's CPU Gather has no bf16 kernel, and outside one a
// Gather on a 16-bit view of the table copies the whole table first.

#include <cstdint>
#include <cstring>

static size_t element_size(const char* dtype) {
  if (std::strcmp(dtype, "bfloat16") == 0 || std::strcmp(dtype, "float16") == 0) return 2;
  if (std::strcmp(dtype, "float32") == 0) return 4;
  return 0;
}

// out[i, :] = table[ids[i], :]; inputs table [V, H] and int32 ids of any shape.
extern "C" int GatherRows(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                          void* stream, void* extra) {
  (void)stream; (void)extra;
  if (nparam != 3 || ndims[0] != 2 || std::strcmp(dtypes[1], "int32") != 0) return 1;
  const size_t row_bytes = static_cast<size_t>(shapes[0][1]) * element_size(dtypes[0]);
  if (row_bytes == 0) return 2;
  int64_t count = 1;
  for (int d = 0; d < ndims[1]; ++d) count *= shapes[1][d];
  const char* table = static_cast<const char*>(params[0]);
  const int32_t* ids = static_cast<const int32_t*>(params[1]);
  char* out = static_cast<char*>(params[2]);
  for (int64_t i = 0; i < count; ++i) {
    if (ids[i] < 0 || ids[i] >= shapes[0][0]) return 3;  // MindSpore raises on a non-zero return
    std::memcpy(out + i * row_bytes, table + static_cast<int64_t>(ids[i]) * row_bytes, row_bytes);
  }
  return 0;
}
