/* The shared-memory session store of csessions.backends.shm (placeholder, issue #4). */
#ifndef CSESSIONS_SHM_H
#define CSESSIONS_SHM_H

#include "state.h"

/* Entries for the module's method table; defined in shm.c. */
#define CS_SHM_METHODS

/* Called from the module's exec slot: adds the store's types and constants. 0 or -1. */
int cs_shm_exec(PyObject *module);

#endif
