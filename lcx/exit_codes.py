"""Exit statuses that launchers act on."""

# lcx.train stopped on a preemption signal after saving a checkpoint: not finished, run it again
# to resume (EX_TEMPFAIL, "try again later"). slurm.sbatch requeues the job on it; the sweep marks
# the stage stopped rather than done or failed.
PREEMPTED_EXIT_CODE = 75
