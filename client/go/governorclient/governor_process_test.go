package governorclient_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// The one line the sidecar prints to stdout once it serves, e.g.
// "governor ready grpc=127.0.0.1:41234 uds=/tmp/g.sock admin=127.0.0.1:9464".
var (
	readyLine = regexp.MustCompile(`^governor ready `)
	grpcField = regexp.MustCompile(`grpc=(\S+)`)
	udsField  = regexp.MustCompile(`uds=(\S+)`)
)

const (
	startTimeout = 30 * time.Second
	stopTimeout  = 20 * time.Second
)

// governorProc is a governor binary started for the tests.
type governorProc struct {
	cmd       *exec.Cmd
	dir       string
	grpcAddr  string
	uds       string
	stderr    string // path of the file collecting its logs
	exited    chan struct{}
	waitErr   error
	readyText string
}

// governorBin resolves the binary: $GOVERNOR_BIN, else
// <repo>/target/debug/governor with the repo found above the working
// directory (go test runs in the package directory).
func governorBin() (string, error) {
	bin := os.Getenv("GOVERNOR_BIN")
	if bin == "" {
		root, err := repoRoot()
		if err != nil {
			return "", fmt.Errorf("GOVERNOR_BIN is not set and %v", err)
		}
		bin = filepath.Join(root, "target", "debug", "governor")
	}
	st, err := os.Stat(bin)
	if err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("governor binary not found or not executable at %s: "+
			"build it (cargo build -p rate-governor) or point GOVERNOR_BIN at one", bin)
	}
	return bin, nil
}

func repoRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	if real, err := filepath.EvalSymlinks(wd); err == nil {
		wd = real
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, "proto", "governor", "v1", "governor.proto")); err == nil {
			return dir, nil
		}
		if filepath.Dir(dir) == dir {
			return "", fmt.Errorf("no repository root (with proto/governor/v1/governor.proto) above %s", wd)
		}
	}
}

// startGovernor writes config to a temp dir and starts the binary on a free
// loopback port, waiting for its ready line.
func startGovernor(config string, extraArgs ...string) (*governorProc, error) {
	bin, err := governorBin()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "gov-go-")
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(dir, "governor.toml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o600); err != nil {
		return nil, err
	}
	stderrPath := filepath.Join(dir, "stderr.log")
	stderrFile, err := os.Create(stderrPath)
	if err != nil {
		return nil, err
	}
	defer stderrFile.Close()

	args := []string{"--config", cfgPath, "--listen", "127.0.0.1:0"}
	// Never the default admin port: sidecars run side by side.
	setsAdmin := false
	for _, a := range extraArgs {
		setsAdmin = setsAdmin || a == "--admin-listen"
	}
	if !setsAdmin {
		args = append(args, "--admin-listen", "127.0.0.1:0")
	}
	args = append(args, extraArgs...)
	cmd := exec.Command(bin, args...)
	cmd.Stderr = stderrFile
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &governorProc{cmd: cmd, dir: dir, stderr: stderrPath, exited: make(chan struct{})}

	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		sent := false
		for sc.Scan() {
			if line := sc.Text(); !sent && readyLine.MatchString(line) {
				ready <- line
				sent = true
			}
		}
	}()
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()

	select {
	case line := <-ready:
		p.readyText = line
		m := grpcField.FindStringSubmatch(line)
		if m == nil {
			p.kill()
			return nil, fmt.Errorf("ready line without grpc=: %q", line)
		}
		p.grpcAddr = m[1]
		if u := udsField.FindStringSubmatch(line); u != nil {
			p.uds = u[1]
		}
		return p, nil
	case <-p.exited:
		return nil, fmt.Errorf("governor exited before its ready line (%v); stderr:\n%s", p.waitErr, p.logTail())
	case <-time.After(startTimeout):
		p.kill()
		return nil, fmt.Errorf("no ready line within %s; stderr:\n%s", startTimeout, p.logTail())
	}
}

// stop sends SIGTERM and waits for a graceful exit; it returns the exit code
// (-1 when it had to be killed).
func (p *governorProc) stop() (int, error) {
	defer os.RemoveAll(p.dir)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return -1, err
	}
	select {
	case <-p.exited:
	case <-time.After(stopTimeout):
		p.kill()
		return -1, fmt.Errorf("governor did not exit within %s of SIGTERM", stopTimeout)
	}
	return p.cmd.ProcessState.ExitCode(), nil
}

func (p *governorProc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
}

func (p *governorProc) logTail() string {
	b, _ := os.ReadFile(p.stderr)
	s := string(b)
	if len(s) > 4000 {
		s = "..." + s[len(s)-4000:]
	}
	return strings.TrimSpace(s)
}

// eventually polls cond every 20ms until it holds or timeout passes.
func eventually(timeout time.Duration, cond func() bool) bool {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if cond() {
			return true
		}
		select {
		case <-ctx.Done():
			return cond()
		case <-tick.C:
		}
	}
}
