/* float.__repr__ of a finite double in C, without dtoa's big-number arithmetic.
 *
 * The digits are std::to_chars's shortest round-trip digits (libstdc++ uses Ryu): the
 * fewest digits that read back as the same double, the closest to it when several do, as
 * CPython's dtoa in mode 0 gives them; the layout is float.__repr__'s (format_float_short
 * in Python/pystrtod.c with 'r'): fixed notation with ".0" for a whole number when the
 * decimal exponent is in [-4, 16), else d[.ddd]e[+-]XX. tests/test_json.py compares it
 * with repr() on random bit patterns and every edge of those rules. C++ lives in this one
 * file, as simdjson does in simdjson_wrap.cpp.
 */
#ifndef CSESSIONS_FLOAT_REPR_H
#define CSESSIONS_FLOAT_REPR_H

#ifdef __cplusplus
extern "C" {
#endif

#define CS_FLOAT_REPR_MAX 32 /* bytes buf must have: "-1.2345678901234567e-308" is 24 */

/* Writes repr(d) (d finite) to buf, no NUL; returns its length, or 0 if to_chars failed
 * (it does not on a finite double; the caller then uses PyOS_double_to_string). */
int cs_float_repr(double d, char *buf);

#ifdef __cplusplus
}
#endif

#endif
