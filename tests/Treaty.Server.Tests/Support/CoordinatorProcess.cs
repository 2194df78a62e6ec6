using Treaty.Cli;
using Xunit.Abstractions;

namespace Treaty.Server.Tests.Support;

/// <summary>
/// <c>treaty serve</c> as a child process on a fixed port and data directory, so it can be killed
/// and started again in place.
/// </summary>
internal sealed class CoordinatorProcess(ITestOutputHelper output) : IAsyncDisposable
{
    private readonly TempDir _dataDir = new("treaty-crash-tests");
    private readonly int _port = ChildProcess.FreePort();
    private readonly List<ChildProcess> _processes = [];
    private ChildProcess? _current;

    public string Url => $"http://127.0.0.1:{_port}";

    /// <summary>Starts a process on the data directory and waits until it serves; returns a client for it.</summary>
    public async Task<HttpClient> StartAsync()
    {
        var dll = Path.Combine(AppContext.BaseDirectory, "treaty.dll");
        File.Exists(dll).ShouldBeTrue($"{dll} is missing: the Cli project's output is not copied to the tests");
        _current = ChildProcess.StartDotnet($"coordinator-{_processes.Count + 1}", dll, ["serve", "--urls", Url, "--data-dir", _dataDir.Path]);
        _processes.Add(_current);
        var http = new HttpClient { BaseAddress = new Uri(Url), Timeout = TimeSpan.FromSeconds(30) };
        try
        {
            await _current.WaitHealthyAsync(http, Url + "/healthz", TimeSpan.FromSeconds(60), CancellationToken.None);
            return http;
        }
        catch
        {
            http.Dispose();
            throw;
        }
    }

    /// <summary>SIGKILL: no shutdown, no flush.</summary>
    public void Kill()
    {
        var process = _current.ShouldNotBeNull();
        process.Kill();
        process.HasExited.ShouldBeTrue();
    }

    public ValueTask DisposeAsync()
    {
        foreach (var process in _processes)
        {
            try
            {
                output.WriteLine($"--- {process.Name} ---");
                output.WriteLine(process.Output);
            }
            catch (InvalidOperationException)
            {
                // no test is running any more
            }

            process.Dispose();
        }

        _dataDir.Dispose();
        return ValueTask.CompletedTask;
    }
}
