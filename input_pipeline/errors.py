"""The one error type for bad input data: it always names the file and the problem."""

import os


class DataError(ValueError):
  """Raised for unusable input data; str() reads '<path>: <problem>'."""

  def __init__(self, path: str | os.PathLike, problem: str):
    self.path = os.fspath(path)
    self.problem = problem
    super().__init__(f'{self.path}: {problem}')
