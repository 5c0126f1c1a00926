# Sourced by the bench/*_vs_tfrs.sh scripts: makes target/tfrs-venv, the Python
# environment every TFRS peer runs in (tensorflow-cpu 2.21, tf-keras 2.21,
# tensorflow-recommenders 0.7.7, numpy), unless it is there, and sets $venv.
venv=target/tfrs-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check tensorflow-cpu==2.21.0 \
    tf-keras==2.21.0 tensorflow-recommenders==0.7.7 numpy
fi
