using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace Treaty.Testing;

/// <summary>
/// A throw-away PostgreSQL 15 cluster on 127.0.0.1: a temp data dir, a free port, started with
/// <c>pg_ctl</c> as the <c>postgres</c> user (initdb refuses root) and stopped (then deleted) on
/// dispose. Never skipped: if PostgreSQL is not installed the fixture fails and says to run
/// <c>./test.sh</c>, which installs it.
/// </summary>
public sealed class PostgresServer : IAsyncDisposable
{
    private const string BinDir = "/usr/lib/postgresql/15/bin";
    private readonly string _root;
    private bool _stopped;

    private PostgresServer(string root, int port)
    {
        _root = root;
        Port = port;
    }

    public int Port { get; }

    /// <summary>Connection string of the superuser <c>treaty</c> to database <paramref name="database"/>.</summary>
    public string ConnectionString(string database = "postgres") =>
        $"Host=127.0.0.1;Port={Port};Username=treaty;Database={database};Pooling=true;Maximum Pool Size=50;Timeout=15;Command Timeout=30";

    public static async Task<PostgresServer> StartAsync()
    {
        if (!File.Exists(Path.Combine(BinDir, "initdb")))
        {
            throw new InvalidOperationException($"PostgreSQL 15 is not installed ({BinDir}/initdb missing): run ./test.sh, which installs it with apt-get.");
        }

        var root = Path.Combine(Path.GetTempPath(), "treaty-pg-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(root);
        var port = FreePort();
        var server = new PostgresServer(root, port);
        try
        {
            await RunAsync("chown", ["postgres", root]);
            await RunAsPostgresAsync($"{BinDir}/initdb -D {root}/data -A trust -U treaty --no-sync");
            await server.StartClusterAsync();
            return server;
        }
        catch
        {
            await server.DisposeAsync();
            throw;
        }
    }

    /// <summary>
    /// Kills the server as a crash would (<c>pg_ctl stop -m immediate</c>: no checkpoint, every
    /// connection dropped) and starts it again on the same data and port after <paramref name="down"/>;
    /// it recovers from its WAL like after a power cut.
    /// </summary>
    public async Task RestartAsync(TimeSpan down)
    {
        await RunAsPostgresAsync($"{BinDir}/pg_ctl -D {_root}/data -m immediate -w -t 30 stop");
        await Task.Delay(down, TimeProvider.System);
        await StartClusterAsync();
    }

    private Task StartClusterAsync() => RunAsPostgresAsync(
        $"{BinDir}/pg_ctl -D {_root}/data -l {_root}/log -w -t 60 start " +
        $"-o '-p {Port} -k {_root} -c listen_addresses=127.0.0.1 -c max_prepared_transactions=100 -c fsync=on -c max_connections=200'");

    /// <summary>Creates a fresh database and returns its connection string.</summary>
    public async Task<string> CreateDatabaseAsync(string prefix)
    {
        var name = $"{prefix}_{Guid.NewGuid():N}"[..Math.Min(prefix.Length + 13, 60)].ToLowerInvariant();
        await using var connection = new Npgsql.NpgsqlConnection(ConnectionString());
        await connection.OpenAsync();
        await using var command = connection.CreateCommand();
        command.CommandText = $"CREATE DATABASE \"{name}\""; // a generated identifier, not user input
        await command.ExecuteNonQueryAsync();
        return ConnectionString(name);
    }

    /// <summary>Restarts the cluster (fast shutdown: every client connection is cut), as an operator or a crash-restart would.</summary>
    public Task RestartAsync() =>
        RunAsPostgresAsync($"{BinDir}/pg_ctl -D {_root}/data -l {_root}/log -w -t 60 -m fast restart");

    public async ValueTask DisposeAsync()
    {
        if (_stopped)
        {
            return;
        }

        _stopped = true;
        try
        {
            if (File.Exists(Path.Combine(_root, "data", "postmaster.pid")))
            {
                await RunAsPostgresAsync($"{BinDir}/pg_ctl -D {_root}/data -m immediate -w -t 30 stop");
            }
        }
        finally
        {
            try
            {
                Directory.Delete(_root, recursive: true);
            }
            catch (IOException)
            {
                // best effort
            }
        }
    }

    private static Task RunAsPostgresAsync(string command) => RunAsync("su", ["postgres", "-s", "/bin/sh", "-c", command]);

    private static async Task RunAsync(string file, string[] args)
    {
        var info = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }

        using var process = Process.Start(info) ?? throw new InvalidOperationException($"could not start {file}");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(90));
        await process.WaitForExitAsync(timeout.Token);
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"{file} {string.Join(' ', args)} exited {process.ExitCode}: {await stdout}{await stderr}");
        }
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return port;
    }
}
