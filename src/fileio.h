/* Session files: the I/O of csessions.backends.file (placeholder, filled in by issue #3). */
#ifndef CSESSIONS_FILEIO_H
#define CSESSIONS_FILEIO_H

#include "state.h"

/* Entries for the module's method table; defined in fileio.c. */
#define CS_FILEIO_METHODS

#endif
