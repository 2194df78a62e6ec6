using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Logging;
using Treaty.Server;

namespace Treaty.Client.Tests.Support;

/// <summary>A real coordinator (Kestrel on 127.0.0.1, engine, SQLite in a temp dir) in this process.</summary>
public sealed class Coordinator : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly TempDir _dataDir;

    private Coordinator(WebApplication app, TempDir dataDir, Uri baseAddress)
    {
        _app = app;
        _dataDir = dataDir;
        BaseAddress = baseAddress;
    }

    public Uri BaseAddress { get; }

    public static async Task<Coordinator> StartAsync()
    {
        var dataDir = new TempDir("treaty-client-tests");
        WebApplication? app = null;
        try
        {
            // Port 0: Kestrel picks a free port, so parallel test classes never race for one.
            app = TreatyServer.CreateApp(
                new TreatyServerOptions { Urls = "http://127.0.0.1:0", DataDir = dataDir.Path },
                b => b.Logging.SetMinimumLevel(LogLevel.Warning));
            await app.StartAsync();
            return new Coordinator(app, dataDir, new Uri(app.Urls.Single()));
        }
        catch
        {
            if (app is not null)
            {
                await app.DisposeAsync();
            }

            dataDir.Dispose();
            throw;
        }
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
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
            _dataDir.Dispose();
        }
    }
}
