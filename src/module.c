/* csessions._core: the module object, its state, and the Python-facing functions.
 *
 * The core knows nothing about Django: bytes, str, dicts and numbers in and out. The
 * Python layer reads settings and passes secrets, salts and times down, and registers
 * the exception types to raise (set_error_types) so that errors are Django's own.
 */
#include <sodium.h>

#include "codec.h"
#include "fileio.h"
#include "shm.h"
#include "hmac.h"
#include "json.h"
#include "pack.h"
#include "util.h"

static PyObject *
json_dumps(PyObject *module, PyObject *obj)
{
    (void)module;
    cs_buf out;
    cs_buf_init(&out);
    PyObject *result = NULL;
    if (cs_json_encode(&out, obj) == 0) {
        result = PyBytes_FromStringAndSize(out.data, out.len);
    }
    cs_buf_free(&out);
    return result;
}

/* The bytes of a bytes-like object, or of a str of code points < 256 read as latin-1 (how
 * the shm store hands values out). 0, or -1 with an exception set; release with
 * PyBuffer_Release when view->obj is set. */
static int
latin1_bytes(const char *fn, PyObject *data, Py_buffer *view)
{
    if (PyUnicode_Check(data)) {
        if (PyUnicode_KIND(data) != PyUnicode_1BYTE_KIND) {
            PyErr_Format(PyExc_ValueError, "%s(): a str must hold only code points < 256", fn);
            return -1;
        }
        view->obj = NULL;
        view->buf = PyUnicode_1BYTE_DATA(data);
        view->len = PyUnicode_GET_LENGTH(data);
        return 0;
    }
    return PyObject_GetBuffer(data, view, PyBUF_SIMPLE);
}

/* fn(state, bytes of data): for the methods that read bytes or a latin-1 str. */
static PyObject *
on_bytes(const char *name, PyObject *module, PyObject *data,
         PyObject *(*fn)(cs_state *, const char *, Py_ssize_t))
{
    Py_buffer view;
    if (latin1_bytes(name, data, &view) < 0) {
        return NULL;
    }
    PyObject *result = fn(cs_get_state(module), view.buf, view.len);
    if (view.obj != NULL) {
        PyBuffer_Release(&view);
    }
    return result;
}

/* pack(obj) -> bytes, or None when obj is not JSON-stable (see pack.h) */
static PyObject *
pack(PyObject *module, PyObject *obj)
{
    (void)module;
    cs_buf out;
    cs_buf_init(&out);
    int rc = cs_pack(&out, obj);
    PyObject *result = rc < 0 ? NULL : rc > 0 ? Py_NewRef(Py_None)
                                              : PyBytes_FromStringAndSize(out.data, out.len);
    cs_buf_free(&out);
    return result;
}

static PyObject *
unpack(PyObject *module, PyObject *data)
{
    return on_bytes("unpack", module, data, cs_unpack);
}

/* zlib's levels -1..9, or CS_DEFLATE_QUICK. 0, or -1 with ValueError set. */
static int
check_level(const char *fn, long level)
{
    if ((level < Z_DEFAULT_COMPRESSION || level > Z_BEST_COMPRESSION) && level != CS_DEFLATE_QUICK) {
        PyErr_Format(PyExc_ValueError, "%s(): level must be -1..9 or DEFLATE_QUICK", fn);
        return -1;
    }
    return 0;
}

/* deflate(data, level) -> bytes: zlib.compress on a reused stream, or at DEFLATE_QUICK
 * deflate_quick.c's stream */
static PyObject *
deflate_(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (cs_check_nargs("deflate", nargs, 2) < 0) {
        return NULL;
    }
    long level = PyLong_AsLong(args[1]);
    if (level == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (check_level("deflate", level) < 0) {
        return NULL;
    }
    Py_buffer view;
    if (latin1_bytes("deflate", args[0], &view) < 0) {
        return NULL;
    }
    PyObject *result = cs_deflate_bytes(cs_get_state(module), view.buf, view.len, (int)level);
    if (view.obj != NULL) {
        PyBuffer_Release(&view);
    }
    return result;
}

/* inflate(data) -> bytes: zlib.decompress on a reused stream; ValueError on bad data */
static PyObject *
inflate_(PyObject *module, PyObject *data)
{
    return on_bytes("inflate", module, data, cs_inflate_bytes);
}

static PyObject *
inflate_quick(PyObject *module, PyObject *data)
{
    return on_bytes("inflate_quick", module, data, cs_inflate_quick_bytes);
}

/* json_loads(bytes-like, or a str of code points < 256: read as the latin-1 bytes it holds) */
static PyObject *
json_loads(PyObject *module, PyObject *data)
{
    return on_bytes("json_loads", module, data, cs_json_decode);
}

static int
check_error_types(cs_state *st)
{
    if (st->bad_signature == NULL || st->signature_expired == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "csessions._core: set_error_types() was not called");
        return -1;
    }
    return 0;
}

/* sign_object(obj, secret, salt, timestamp: int, level: int, compress_above: int) -> str */
static PyObject *
sign_object(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (cs_check_nargs("sign_object", nargs, 6) < 0) {
        return NULL;
    }
    if (!PyLong_Check(args[3]) || !PyLong_Check(args[4]) || !PyLong_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError, "sign_object() takes int timestamp, level, compress_above");
        return NULL;
    }
    long level = PyLong_AsLong(args[4]);
    Py_ssize_t above = PyLong_AsSsize_t(args[5]);
    if ((level == -1 || above == -1) && PyErr_Occurred()) {
        return NULL;
    }
    if (check_level("sign_object", level) < 0) {
        return NULL;
    }
    if (above < 0) {
        PyErr_SetString(PyExc_ValueError, "sign_object(): compress_above must be >= 0");
        return NULL;
    }
    return cs_sign_object(cs_get_state(module), args[0], args[1], args[2], args[3], (int)level,
                          above);
}

/* unsign_object(signed: str, secret, fallback_keys, salt, max_age or None, now: float) */
static PyObject *
unsign_object(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    cs_state *st = cs_get_state(module);
    if (cs_check_nargs("unsign_object", nargs, 6) < 0 || check_error_types(st) < 0) {
        return NULL;
    }
    return cs_unsign_object(st, args[0], args[1], args[2], args[3], args[4], args[5]);
}

#define SESSION_KEY_LEN 32

/* 32 characters of [a-z0-9], each uniform: random bytes >= 252 (= 7 * 36) are dropped. */
static PyObject *
new_session_key(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    static const char chars[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    PyObject *key = PyUnicode_New(SESSION_KEY_LEN, 127);
    if (key == NULL) {
        return NULL;
    }
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(key);
    unsigned char pool[48];
    int have = 0;
    size_t used = sizeof(pool);
    while (have < SESSION_KEY_LEN) {
        if (used == sizeof(pool)) {
            randombytes_buf(pool, sizeof(pool));
            used = 0;
        }
        unsigned char r = pool[used++];
        if (r < 252) {
            out[have++] = (Py_UCS1)chars[r % 36];
        }
    }
    sodium_memzero(pool, sizeof(pool));
    return key;
}

static PyObject *
set_error_types(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (cs_check_nargs("set_error_types", nargs, 2) < 0) {
        return NULL;
    }
    for (int i = 0; i < 2; i++) {
        if (!PyExceptionClass_Check(args[i])) {
            PyErr_SetString(PyExc_TypeError, "set_error_types() takes two exception classes");
            return NULL;
        }
    }
    cs_state *st = cs_get_state(module);
    Py_XSETREF(st->bad_signature, Py_NewRef(args[0]));
    Py_XSETREF(st->signature_expired, Py_NewRef(args[1]));
    Py_RETURN_NONE;
}

/* hmac_bench(backend: str, key: bytes, msg: bytes, iterations: int) -> seconds */
static PyObject *
hmac_bench(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (cs_check_nargs("hmac_bench", nargs, 4) < 0) {
        return NULL;
    }
    const char *backend = PyUnicode_AsUTF8(args[0]);
    if (backend == NULL) {
        return NULL;
    }
    if (!PyBytes_Check(args[1]) || !PyBytes_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "hmac_bench() takes bytes for key and msg");
        return NULL;
    }
    long iterations = PyLong_AsLong(args[3]);
    if (iterations == -1 && PyErr_Occurred()) {
        return NULL;
    }
    double seconds;
    Py_BEGIN_ALLOW_THREADS
    seconds = cs_hmac_bench(backend, (const unsigned char *)PyBytes_AS_STRING(args[1]),
                            (size_t)PyBytes_GET_SIZE(args[1]),
                            (const unsigned char *)PyBytes_AS_STRING(args[2]),
                            (size_t)PyBytes_GET_SIZE(args[2]), iterations);
    Py_END_ALLOW_THREADS
    if (seconds < 0) {
        PyErr_Format(PyExc_ValueError, "unknown backend %R (openssl or sodium)", args[0]);
        return NULL;
    }
    return PyFloat_FromDouble(seconds);
}

static PyMethodDef core_methods[] = {
    {"json_dumps", json_dumps, METH_O,
     "json_dumps(obj) -> bytes, as json.dumps(obj, separators=(',', ':')).encode('latin-1')"},
    {"deflate", (PyCFunction)(void (*)(void))deflate_, METH_FASTCALL,
     "deflate(data, level) -> bytes, as zlib.compress(data, level), on a reused stream"},
    {"inflate", inflate_, METH_O,
     "inflate(data) -> bytes, as zlib.decompress(data); ValueError if it is not a zlib stream"},
    {"inflate_quick", inflate_quick, METH_O,
     "inflate_quick(data) -> bytes | None: the quick deflate's own decoder alone (None: a "
     "stream it leaves to zlib); for the tests"},
    {"pack", pack, METH_O,
     "pack(obj) -> bytes, or None if a JSON round trip would change obj or refuse it (src/pack.h)"},
    {"unpack", unpack, METH_O,
     "unpack(data: bytes or latin-1 str) -> object; ValueError if malformed"},
    {"json_loads", json_loads, METH_O,
     "json_loads(data: bytes) -> object, as json.loads(data.decode('latin-1'))"},
    {"sign_object", (PyCFunction)(void (*)(void))sign_object, METH_FASTCALL,
     "sign_object(obj, secret, salt, timestamp, level, compress_above) -> str "
     "(TimestampSigner.sign_object; level -1 and compress_above 0 are compress=True)"},
    {"unsign_object", (PyCFunction)(void (*)(void))unsign_object, METH_FASTCALL,
     "unsign_object(signed, secret, fallback_keys, salt, max_age, now) -> object"},
    {"new_session_key", new_session_key, METH_NOARGS,
     "new_session_key() -> 32 random characters of [a-z0-9]"},
    {"set_error_types", (PyCFunction)(void (*)(void))set_error_types, METH_FASTCALL,
     "set_error_types(bad_signature, signature_expired): the exceptions unsign raises"},
    {"hmac_bench", (PyCFunction)(void (*)(void))hmac_bench, METH_FASTCALL,
     "hmac_bench(backend, key, msg, iterations) -> seconds, for the benchmark"},
    CS_FILEIO_METHODS
    CS_SHM_METHODS
    {NULL, NULL, 0, NULL},
};

static PyObject *
import_attr(const char *module, const char *name)
{
    PyObject *m = PyImport_ImportModule(module);
    if (m == NULL) {
        return NULL;
    }
    PyObject *attr = PyObject_GetAttrString(m, name);
    Py_DECREF(m);
    return attr;
}

static int
core_exec(PyObject *module)
{
    cs_state *st = cs_get_state(module);
    if (sodium_init() < 0) {
        PyErr_SetString(PyExc_ImportError, "csessions: libsodium failed to initialise");
        return -1;
    }
    cs_fixed_codes_init(&st->fixed_codes);
    st->key_cache = PyDict_New();
    st->json_loads = import_attr("json", "loads");
    st->b64decode = import_attr("base64", "urlsafe_b64decode");
    st->zlib_decompress = import_attr("zlib", "decompress");
    if (!st->key_cache || !st->json_loads || !st->b64decode || !st->zlib_decompress) {
        return -1;
    }
    if (cs_shm_exec(module) < 0) {
        return -1;
    }
    return PyModule_AddIntConstant(module, "DEFLATE_QUICK", CS_DEFLATE_QUICK) < 0 ||
                   PyModule_AddStringConstant(module, "ZLIB_VERSION", zlibVersion()) < 0 ||
                   PyModule_AddStringConstant(module, "SODIUM_VERSION",
                                              sodium_version_string()) < 0
               ? -1
               : 0;
}

static int
core_traverse(PyObject *module, visitproc visit, void *arg)
{
    cs_state *st = cs_get_state(module);
    Py_VISIT(st->bad_signature);
    Py_VISIT(st->signature_expired);
    Py_VISIT(st->key_cache);
    Py_VISIT(st->json_loads);
    Py_VISIT(st->b64decode);
    Py_VISIT(st->zlib_decompress);
    return 0;
}

static int
core_clear(PyObject *module)
{
    cs_state *st = cs_get_state(module);
    Py_CLEAR(st->bad_signature);
    Py_CLEAR(st->signature_expired);
    Py_CLEAR(st->key_cache);
    Py_CLEAR(st->json_loads);
    Py_CLEAR(st->b64decode);
    Py_CLEAR(st->zlib_decompress);
    for (int i = 0; i < CS_PACK_MEMO; i++) {
        Py_CLEAR(st->pack_memo[i]); /* str: not tracked by the GC, so not visited */
    }
    return 0;
}

static void
core_free(void *module)
{
    core_clear((PyObject *)module);
    cs_state *st = cs_get_state((PyObject *)module);
    if (st->deflater_ready) {
        deflateEnd(&st->deflater);
        st->deflater_ready = 0;
    }
    if (st->inflater_ready) {
        inflateEnd(&st->inflater);
        st->inflater_ready = 0;
    }
}

static PyModuleDef_Slot core_slots[] = {
    {Py_mod_exec, core_exec},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "csessions._core",
    .m_doc = "The C core of csessions: JSON, signing codec, session keys.",
    .m_size = sizeof(cs_state),
    .m_methods = core_methods,
    .m_slots = core_slots,
    .m_traverse = core_traverse,
    .m_clear = core_clear,
    .m_free = core_free,
};

PyMODINIT_FUNC
PyInit__core(void)
{
    return PyModuleDef_Init(&core_module);
}
