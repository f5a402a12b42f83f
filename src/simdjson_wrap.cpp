// simdjson is C++; the rest of csessions is C. This file is the whole boundary: no
// exception crosses it (simdjson is used through its error-code API, and allocation
// failures are caught here).
#include <new>

#include <simdjson.h>

#include "simdjson_wrap.h"

struct cs_json_parser {
    simdjson::dom::parser parser;
};

namespace {

int walk(simdjson::dom::element e, const cs_json_visitor *v, void *ctx)
{
    using simdjson::dom::element_type;
    switch (e.type()) {
    case element_type::ARRAY: {
        if (v->start_array(ctx)) return CS_JSON_STOPPED;
        simdjson::dom::array array = e.get_array().value_unsafe(); // a copy: the result is a temporary
        for (simdjson::dom::element child : array) {
            int rc = walk(child, v, ctx);
            if (rc) return rc;
        }
        return v->end_array(ctx) ? CS_JSON_STOPPED : CS_JSON_OK;
    }
    case element_type::OBJECT: {
        if (v->start_object(ctx)) return CS_JSON_STOPPED;
        simdjson::dom::object object = e.get_object().value_unsafe();
        for (simdjson::dom::key_value_pair field : object) {
            if (v->key(ctx, field.key.data(), field.key.size())) return CS_JSON_STOPPED;
            int rc = walk(field.value, v, ctx);
            if (rc) return rc;
        }
        return v->end_object(ctx) ? CS_JSON_STOPPED : CS_JSON_OK;
    }
    case element_type::INT64:
        return v->int64(ctx, e.get_int64().value_unsafe()) ? CS_JSON_STOPPED : CS_JSON_OK;
    case element_type::UINT64:
        return v->uint64(ctx, e.get_uint64().value_unsafe()) ? CS_JSON_STOPPED : CS_JSON_OK;
    case element_type::DOUBLE:
        return v->dbl(ctx, e.get_double().value_unsafe()) ? CS_JSON_STOPPED : CS_JSON_OK;
    case element_type::STRING: {
        std::string_view s = e.get_string().value_unsafe();
        return v->string(ctx, s.data(), s.size()) ? CS_JSON_STOPPED : CS_JSON_OK;
    }
    case element_type::BOOL:
        return v->boolean(ctx, e.get_bool().value_unsafe()) ? CS_JSON_STOPPED : CS_JSON_OK;
    case element_type::NULL_VALUE:
        return v->null_value(ctx) ? CS_JSON_STOPPED : CS_JSON_OK;
    }
    return CS_JSON_REJECTED;
}

}  // namespace

extern "C" {

int cs_double_from_decimal(uint64_t mantissa, int64_t exp10, int negative, const char *s,
                           const char *end, double *out)
{
    namespace np = simdjson::builtin::numberparsing;
    if (exp10 < simdjson::internal::smallest_power || exp10 > simdjson::internal::largest_power) {
        return -1;
    }
    if (np::compute_float_64(exp10, mantissa, negative != 0, *out)) {
        return 0;
    }
    // Here only for the rare rounding Eisel-Lemire cannot decide. A zero mantissa never
    // gets this far (compute_float_64's i == 0 case), which matters: parse_double's fallback
    // skips leading zeros with no end check. parse_double also guesses for itself whether
    // the digits fit 64 bits, and in 3.0.1 guesses wrong for 0.1 written out in full: the
    // caller's count of significant digits is what keeps such text away.
    simdjson::simdjson_result<double> r = np::parse_double(
        reinterpret_cast<const uint8_t *>(s), reinterpret_cast<const uint8_t *>(end));
    return std::move(r).get(*out) == simdjson::SUCCESS ? 0 : -1;
}

cs_json_parser *cs_json_parser_new(void)
{
    return new (std::nothrow) cs_json_parser();
}

void cs_json_parser_free(cs_json_parser *parser)
{
    delete parser;
}

int cs_json_parse(cs_json_parser *parser, const char *buf, size_t len,
                  const cs_json_visitor *visitor, void *ctx)
{
    try {
        simdjson::dom::element root;
        // realloc_if_needed: the input is a Python bytes object without simdjson's padding.
        simdjson::error_code err = parser->parser.parse(buf, len, true).get(root);
        if (err == simdjson::MEMALLOC) return CS_JSON_NOMEM;
        if (err) return CS_JSON_REJECTED;
        return walk(root, visitor, ctx);
    }
    catch (const std::bad_alloc &) {
        return CS_JSON_NOMEM;
    }
    catch (...) {
        return CS_JSON_REJECTED;
    }
}

}  // extern "C"
