/* float.__repr__ from std::to_chars's shortest digits: see float_repr.h. */
#include "float_repr.h"

#include <charconv>
#include <cstring>
#include <system_error>

extern "C" int
cs_float_repr(double d, char *buf)
{
    /* "-d.ddddddddddddddddde-308": the sign, 17 digits, a point and a 5-byte exponent. */
    char sci[CS_FLOAT_REPR_MAX];
    std::to_chars_result r = std::to_chars(sci, sci + sizeof sci, d, std::chars_format::scientific);
    if (r.ec != std::errc()) {
        return 0;
    }
    const char *p = sci, *end = r.ptr;
    char *out = buf;
    if (*p == '-') {
        *out++ = *p++;
    }
    char digits[20];
    int nd = 0;
    for (; p < end && *p != 'e'; p++) {
        if (*p != '.') {
            if (nd == (int)sizeof digits) {
                return 0;
            }
            digits[nd++] = *p;
        }
    }
    if (p == end || nd == 0) {
        return 0;
    }
    p++; /* 'e' */
    int negative_exp = *p == '-';
    p++; /* the exponent's sign, always written */
    int exp = 0;
    for (; p < end; p++) {
        exp = exp * 10 + (*p - '0');
    }
    if (negative_exp) {
        exp = -exp;
    }
    int decpt = exp + 1; /* the value is 0.digits * 10**decpt */
    if (decpt <= -4 || decpt > 16) {
        *out++ = digits[0];
        if (nd > 1) {
            *out++ = '.';
            std::memcpy(out, digits + 1, (size_t)(nd - 1));
            out += nd - 1;
        }
        *out++ = 'e';
        int e = decpt - 1;
        *out++ = e < 0 ? '-' : '+';
        if (e < 0) {
            e = -e;
        }
        if (e >= 100) {
            *out++ = (char)('0' + e / 100);
        }
        *out++ = (char)('0' + e / 10 % 10);
        *out++ = (char)('0' + e % 10);
    }
    else if (decpt <= 0) {
        *out++ = '0';
        *out++ = '.';
        for (int i = decpt; i < 0; i++) {
            *out++ = '0';
        }
        std::memcpy(out, digits, (size_t)nd);
        out += nd;
    }
    else if (decpt >= nd) {
        std::memcpy(out, digits, (size_t)nd);
        out += nd;
        for (int i = nd; i < decpt; i++) {
            *out++ = '0';
        }
        *out++ = '.';
        *out++ = '0';
    }
    else {
        std::memcpy(out, digits, (size_t)decpt);
        out += decpt;
        *out++ = '.';
        std::memcpy(out, digits + decpt, (size_t)(nd - decpt));
        out += nd - decpt;
    }
    return (int)(out - buf);
}
