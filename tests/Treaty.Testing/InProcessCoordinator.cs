using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Logging;
using Treaty.Client;
using Treaty.Server;

namespace Treaty.Testing;

/// <summary>A real coordinator (Kestrel, engine, SQLite file in a temp dir) started in this process.</summary>
public sealed class InProcessCoordinator : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly bool _ownsDataDir;

    private InProcessCoordinator(WebApplication app, TempDir dataDir, bool ownsDataDir)
    {
        _app = app;
        DataDir = dataDir;
        _ownsDataDir = ownsDataDir;
    }

    public TempDir DataDir { get; }

    /// <summary>The coordinator's services (its engine, store, alert monitor).</summary>
    public IServiceProvider Services => _app.Services;

    public Uri BaseAddress { get; private set; } = null!;

    /// <summary>Raw HTTP to the coordinator, for status codes, headers and odd bodies.</summary>
    public HttpClient Http { get; private set; } = null!;

    /// <summary>The SDK, for the natural path.</summary>
    public TreatyClient Client { get; private set; } = null!;

    /// <param name="recoveryInterval">How often recovery scans (250 ms by default, to keep tests quick).</param>
    /// <param name="configure">Last say over the host builder.</param>
    /// <param name="prefix">Prefix of the temp data dir.</param>
    /// <param name="configureOptions">Changes the server options (e.g. a callback secret) before they are validated.</param>
    /// <param name="dataDir">Run on this data dir (a restart on the same store); the caller deletes it.
    /// Null: a fresh one, deleted on dispose.</param>
    public static async Task<InProcessCoordinator> StartAsync(
        TimeSpan? recoveryInterval = null,
        Action<WebApplicationBuilder>? configure = null,
        string prefix = "treaty-tests",
        Action<TreatyServerOptions>? configureOptions = null,
        TempDir? dataDir = null)
    {
        var ownsDataDir = dataDir is null;
        dataDir ??= new TempDir(prefix);
        try
        {
            var options = new TreatyServerOptions
            {
                // Port 0: Kestrel binds a free port itself, so parallel test classes never race for one.
                Urls = "http://127.0.0.1:0",
                DataDir = dataDir.Path,
                RecoveryInterval = recoveryInterval ?? TimeSpan.FromMilliseconds(250),
            };
            configureOptions?.Invoke(options);
            var app = TreatyServer.CreateApp(options, b =>
            {
                b.Logging.SetMinimumLevel(LogLevel.Warning);
                configure?.Invoke(b);
            });
            var coordinator = new InProcessCoordinator(app, dataDir, ownsDataDir);
            try
            {
                await app.StartAsync();
                coordinator.BaseAddress = new Uri(app.Urls.Single());
                coordinator.Http = new HttpClient { BaseAddress = coordinator.BaseAddress, Timeout = TimeSpan.FromSeconds(60) };
                coordinator.Client = new TreatyClient(coordinator.Http);
                return coordinator;
            }
            catch
            {
                await coordinator.DisposeAsync();
                throw;
            }
        }
        catch
        {
            if (ownsDataDir)
            {
                dataDir.Dispose();
            }

            throw;
        }
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            Client?.Dispose();
            Http?.Dispose();
            using var stopTimeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
            try
            {
                await _app.StopAsync(stopTimeout.Token);
            }
            finally
            {
                await _app.DisposeAsync();
            }
        }
        finally
        {
            if (_ownsDataDir)
            {
                DataDir.Dispose();
            }
        }
    }
}

/// <summary>A fresh directory under the temp dir, deleted on dispose.</summary>
public sealed class TempDir : IDisposable
{
    public TempDir(string prefix)
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"{prefix}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public void Dispose()
    {
        for (var attempt = 0; attempt < 5; attempt++)
        {
            try
            {
                if (Directory.Exists(Path))
                {
                    Directory.Delete(Path, recursive: true);
                }

                return;
            }
            catch (IOException) when (attempt < 4)
            {
                Thread.Sleep(100 * (attempt + 1)); // a file may still be closing
            }
            catch (UnauthorizedAccessException) when (attempt < 4)
            {
                Thread.Sleep(100 * (attempt + 1));
            }
        }
    }
}
