/* The little of simdjson that csessions uses, behind a C API.
 *
 * cs_double_from_decimal() gives the double nearest to (-1 if negative) * mantissa *
 * 10**exp10, what float() gives for the number's text s[0:end - s], which it reads when the
 * fast algorithm cannot decide the rounding (simdjson's exact parser, Eisel-Lemire first).
 * The mantissa must hold the number's digits whole: at most 19 significant ones. It returns
 * 0, or -1 when the number is out of a double's range.
 *
 * cs_json_parse() validates a document with simdjson's DOM parser and walks it depth
 * first, calling the visitor once per value, in document order: scalars, then for
 * containers start / members / end, and for objects `key` before each member's value.
 * Nothing of simdjson escapes this file; string pointers passed to the visitor are valid
 * only during the callback. A visitor returning non-zero stops the walk.
 */
#ifndef CSESSIONS_SIMDJSON_WRAP_H
#define CSESSIONS_SIMDJSON_WRAP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cs_json_parser cs_json_parser;

typedef struct {
    int (*null_value)(void *ctx);
    int (*boolean)(void *ctx, int value);
    int (*int64)(void *ctx, int64_t value);
    int (*uint64)(void *ctx, uint64_t value);
    int (*dbl)(void *ctx, double value);
    int (*string)(void *ctx, const char *s, size_t len);
    int (*key)(void *ctx, const char *s, size_t len);
    int (*start_array)(void *ctx);
    int (*end_array)(void *ctx);
    int (*start_object)(void *ctx);
    int (*end_object)(void *ctx);
} cs_json_visitor;

enum {
    CS_JSON_OK = 0,
    CS_JSON_REJECTED = 1, /* simdjson refused the text: the caller takes the exact path */
    CS_JSON_STOPPED = 2,  /* a visitor callback returned non-zero */
    CS_JSON_NOMEM = 3,
};

int cs_double_from_decimal(uint64_t mantissa, int64_t exp10, int negative, const char *s,
                           const char *end, double *out);

/* NULL when out of memory. */
cs_json_parser *cs_json_parser_new(void);
void cs_json_parser_free(cs_json_parser *parser);
int cs_json_parse(cs_json_parser *parser, const char *buf, size_t len,
                  const cs_json_visitor *visitor, void *ctx);

#ifdef __cplusplus
}
#endif

#endif
