"""The errors the program reports to the user as one line (`minivae: error: ...`)."""


class TrainError(Exception):
    """A problem the user can fix (bad setting, unusable run folder, ...); the message says what."""


class ResumeMismatch(TrainError):
    """--resume with settings that differ from the run's: the message names the flag."""


class NonFiniteLossError(TrainError):
    """Training produced a NaN or infinity; the message names the epoch and step."""
