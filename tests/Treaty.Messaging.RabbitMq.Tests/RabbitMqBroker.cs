using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using RabbitMQ.Client;

namespace Treaty.Messaging.RabbitMq.Tests;

/// <summary>
/// A throw-away RabbitMQ node of Debian's rabbitmq-server, on 127.0.0.1 only: its own temp dir (owned by the
/// <c>rabbitmq</c> user, which the package's script switches to), free ports for AMQP, Erlang distribution and its
/// own epmd (so brokers started by parallel test classes never share one), stopped by process id.
/// </summary>
/// <remarks>Never skipped: a missing rabbitmq-server fails the test with the fix (./test.sh installs it).</remarks>
public sealed class RabbitMqBroker : IAsyncLifetime
{
    private const string ServerScript = "/usr/sbin/rabbitmq-server";
    private const string Epmd = "/usr/bin/epmd";
    private static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(90);

    private readonly string _directory = Path.Combine(Path.GetTempPath(), "treaty-rabbitmq-" + Guid.NewGuid().ToString("N")[..12]);
    private Process? _epmd;
    private Process? _server;
    private Process? _watchdog;
    private int _epmdPort;
    private int _distPort;

    /// <summary>The AMQP port on 127.0.0.1.</summary>
    public int Port { get; private set; }

    /// <summary>amqp://guest:guest@127.0.0.1:PORT/ — guest may log in from loopback.</summary>
    public Uri Uri => new($"amqp://guest:guest@127.0.0.1:{Port}/");

    /// <summary>How long the last start took until AMQP connections were accepted.</summary>
    public TimeSpan LastStartTime { get; private set; }

    /// <summary>How long the first start took (a fresh node: it creates its database).</summary>
    public TimeSpan FirstStartTime { get; private set; }

    /// <summary>The node's log directory, for failure messages.</summary>
    public string LogDirectory => Path.Combine(_directory, "log");

    public async Task InitializeAsync()
    {
        if (!File.Exists(ServerScript))
            throw new InvalidOperationException($"{ServerScript} is missing: install Debian's rabbitmq-server (./test.sh does: apt-get install -y rabbitmq-server).");

        Directory.CreateDirectory(_directory);
        await File.WriteAllTextAsync(Path.Combine(_directory, "enabled_plugins"), "[].\n");
        await RunAsync("chown", "-R", "rabbitmq:rabbitmq", _directory);
        Port = FreePort();
        _distPort = FreePort();
        _epmdPort = FreePort();
        try
        {
            _epmd = Process.Start(new ProcessStartInfo(Epmd) { ArgumentList = { "-port", _epmdPort.ToString(System.Globalization.CultureInfo.InvariantCulture), "-address", "127.0.0.1" }, UseShellExecute = false })
                ?? throw new InvalidOperationException("epmd did not start");
            await StartServerAsync();
            StartWatchdog();
        }
        catch
        {
            await DisposeAsync();
            throw;
        }
    }

    /// <summary>Stops the node (gracefully unless <paramref name="kill"/>) and starts it again on the same data and ports.</summary>
    public async Task RestartAsync(bool kill = false)
    {
        await StopServerAsync(kill);
        await StartServerAsync();
    }

    /// <summary>Freezes (SIGSTOP) or thaws (SIGCONT) the node: its sockets stay open but it answers nothing.</summary>
    public async Task PauseAsync(bool paused)
    {
        var pid = (await File.ReadAllTextAsync(PidFile)).Trim();
        await RunAsync("kill", paused ? "-STOP" : "-CONT", pid);
    }

    /// <summary>Stops the node, the epmd it used and deletes its files, whatever state the tests left.</summary>
    public async Task DisposeAsync()
    {
        if (_watchdog is { } watchdog)
        {
            KillQuietly(watchdog);
            watchdog.Dispose();
            _watchdog = null;
        }

        await StopServerAsync(kill: true);
        if (_epmd is { } epmd)
        {
            KillQuietly(epmd);
            epmd.Dispose();
            _epmd = null;
        }

        try
        {
            Directory.Delete(_directory, recursive: true);
        }
        catch (IOException)
        {
            // A file still held by an exiting process; the temp dir is cleaned by the system.
        }
    }

    private async Task StartServerAsync()
    {
        var started = Stopwatch.StartNew();
        var info = new ProcessStartInfo(ServerScript) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        var inv = System.Globalization.CultureInfo.InvariantCulture;
        info.Environment["RABBITMQ_NODE_IP_ADDRESS"] = "127.0.0.1";
        info.Environment["RABBITMQ_NODE_PORT"] = Port.ToString(inv);
        info.Environment["RABBITMQ_DIST_PORT"] = _distPort.ToString(inv);
        info.Environment["ERL_EPMD_ADDRESS"] = "127.0.0.1";
        info.Environment["ERL_EPMD_PORT"] = _epmdPort.ToString(inv);
        info.Environment["RABBITMQ_NODENAME"] = $"treaty{Port}@localhost";
        info.Environment["RABBITMQ_MNESIA_BASE"] = Path.Combine(_directory, "mnesia");
        info.Environment["RABBITMQ_LOG_BASE"] = LogDirectory;
        info.Environment["RABBITMQ_ENABLED_PLUGINS_FILE"] = Path.Combine(_directory, "enabled_plugins");
        info.Environment["RABBITMQ_FEATURE_FLAGS_FILE"] = Path.Combine(_directory, "feature_flags");
        info.Environment["RABBITMQ_PID_FILE"] = PidFile;
        // The distribution listener binds every interface unless told otherwise.
        info.Environment["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] = "-kernel inet_dist_use_interface {127,0,0,1}";
        var server = Process.Start(info) ?? throw new InvalidOperationException("rabbitmq-server did not start");
        var output = new System.Text.StringBuilder();
        server.OutputDataReceived += (_, e) => { lock (output) output.AppendLine(e.Data); };
        server.ErrorDataReceived += (_, e) => { lock (output) output.AppendLine(e.Data); };
        server.BeginOutputReadLine();
        server.BeginErrorReadLine();
        _server = server;

        var factory = new ConnectionFactory { Uri = Uri, AutomaticRecoveryEnabled = false };
        while (true)
        {
            if (server.HasExited)
            {
                string text;
                lock (output) text = output.ToString();
                throw new InvalidOperationException($"rabbitmq-server exited with {server.ExitCode} before accepting connections:\n{text}");
            }

            if (started.Elapsed > StartTimeout)
                throw new TimeoutException($"rabbitmq-server did not accept AMQP connections on 127.0.0.1:{Port} within {StartTimeout}; logs in {LogDirectory}");
            try
            {
                await using var connection = await factory.CreateConnectionAsync();
                await connection.CloseAsync();
                break;
            }
            catch (Exception e) when (e is RabbitMQ.Client.Exceptions.BrokerUnreachableException or IOException or SocketException)
            {
                await Task.Delay(TimeSpan.FromMilliseconds(250));
            }
        }

        LastStartTime = started.Elapsed;
        if (FirstStartTime == TimeSpan.Zero)
            FirstStartTime = started.Elapsed;
    }

    private string PidFile => Path.Combine(_directory, "pid");

    private async Task StopServerAsync(bool kill)
    {
        // The script runs beam.smp as the rabbitmq user through su; the node's own process id is in the pid file.
        if (File.Exists(PidFile) && int.TryParse((await File.ReadAllTextAsync(PidFile)).Trim(), out var pid))
        {
            try
            {
                using var beam = Process.GetProcessById(pid);
                if (kill)
                {
                    beam.Kill(entireProcessTree: true);
                }
                else
                {
                    await RunAsync("kill", "-TERM", pid.ToString(System.Globalization.CultureInfo.InvariantCulture));
                }

                using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
                try
                {
                    await beam.WaitForExitAsync(timeout.Token);
                }
                catch (OperationCanceledException)
                {
                    beam.Kill(entireProcessTree: true);
                    await beam.WaitForExitAsync();
                }
            }
            catch (ArgumentException)
            {
                // Already gone.
            }

            File.Delete(PidFile);
        }

        if (_server is { } server)
        {
            KillQuietly(server);
            await server.WaitForExitAsync();
            server.Dispose();
            _server = null;
        }
    }

    /// <summary>
    /// A test host killed before it disposes its fixtures (a run's timeout, SIGKILL) would leave the node running:
    /// a shell that outlives it kills the node (whichever beam.smp the pid file names then) and the epmd once the
    /// host is gone, and deletes the files.
    /// </summary>
    private void StartWatchdog()
    {
        var script = $$"""
            while kill -0 {{Environment.ProcessId}} 2>/dev/null; do sleep 1; done
            [ -f '{{PidFile}}' ] && kill -9 "$(cat '{{PidFile}}')"
            kill {{_epmd!.Id}}
            rm -rf '{{_directory}}'
            """;
        _watchdog = Process.Start(new ProcessStartInfo("/bin/sh") { ArgumentList = { "-c", script }, UseShellExecute = false })
            ?? throw new InvalidOperationException("the watchdog shell did not start");
    }

    private static void KillQuietly(Process process)
    {
        try
        {
            if (!process.HasExited)
                process.Kill(entireProcessTree: true);
        }
        catch (InvalidOperationException)
        {
            // Exited meanwhile.
        }
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    private static async Task RunAsync(string file, params string[] arguments)
    {
        var info = new ProcessStartInfo(file) { UseShellExecute = false };
        foreach (var argument in arguments)
            info.ArgumentList.Add(argument);
        using var process = Process.Start(info) ?? throw new InvalidOperationException($"{file} did not start");
        await process.WaitForExitAsync();
        if (process.ExitCode != 0)
            throw new InvalidOperationException($"{file} {string.Join(' ', arguments)} exited with {process.ExitCode}");
    }
}
