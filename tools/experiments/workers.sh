# Sourced by the study scripts here: two_workers LOG ARGS... runs two one-thread volmae-study processes with the same
# ARGS side by side (OMP_NUM_THREADS=1, logs LOGa.log / LOGb.log); each claims runs of the one --out-dir, so the two
# cores split the study's runs (a second worker fine-tunes scratch runs while the first pretrains).
two_workers() {
  local log=$1 w; shift
  for w in a b; do OMP_NUM_THREADS=1 volmae-study "$@" > "$log$w.log" 2>&1 & sleep 20; done
  wait
}
