using System.Collections.Concurrent;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace Treaty.Server.Tests.Support;

/// <summary>One call a participant received, as it arrived.</summary>
public sealed class ParticipantCall
{
    private long _completedSeq = long.MaxValue;

    public required long Seq { get; init; }

    public required string Path { get; init; }

    public required string? Gid { get; init; }

    public required string? Branch { get; init; }

    public required string? Op { get; init; }

    public required string? IdempotencyKey { get; init; }

    public required string? ContentType { get; init; }

    public required string Body { get; init; }

    /// <summary>The status the participant answered (0 until it answered).</summary>
    public int Status { get; internal set; }

    /// <summary>Position in the participant's global order when the answer was written (MaxValue until then).</summary>
    public long CompletedSeq => Interlocked.Read(ref _completedSeq);

    internal void Complete(long seq) => Interlocked.Exchange(ref _completedSeq, seq);
}

/// <summary>How the participant answers one call.</summary>
/// <param name="Status">HTTP status of the answer.</param>
/// <param name="Delay">Wait before answering.</param>
/// <param name="Until">Wait for this task (a gate the test opens) before answering.</param>
public sealed record Reply(int Status, TimeSpan Delay = default, Task? Until = null)
{
    public static Reply Ok { get; } = new(200);
}

/// <summary>A gate a scripted call waits on until the test opens it.</summary>
public sealed class Gate
{
    private readonly TaskCompletionSource _tcs = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public Task Task => _tcs.Task;

    public void Open() => _tcs.TrySetResult();
}

/// <summary>
/// A participant service on its own in-process Kestrel: records every call (path, Treaty headers,
/// body) and answers as scripted per path. Like a real participant with an idempotency-key store, it
/// applies an effect at most once per Idempotency-Key, so tests can compare effects with calls.
/// </summary>
public sealed class Participant : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly ConcurrentQueue<ParticipantCall> _calls = new();
    private readonly ConcurrentDictionary<string, ReplyScript> _scripts = new(StringComparer.Ordinal);
    // Idempotency key -> (path, stored answer): the participant's "database" of applied effects.
    private readonly ConcurrentDictionary<string, (string Path, string Result)> _applied = new(StringComparer.Ordinal);
    private readonly CancellationTokenSource _shutdown = new();
    private long _seq;

    private Participant(WebApplication app) => _app = app;

    public Uri BaseAddress { get; private set; } = null!;

    public static async Task<Participant> StartAsync()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0"); // Kestrel picks a free port: no race with other tests.
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        var app = builder.Build();
        var participant = new Participant(app);
        app.Run(participant.HandleAsync);
        await app.StartAsync();
        participant.BaseAddress = new Uri(app.Urls.Single());
        return participant;
    }

    /// <summary>The absolute URL of <paramref name="path"/> (no leading slash) on this participant.</summary>
    public string Url(string path) => new Uri(BaseAddress, path).AbsoluteUri;

    /// <summary>Answers the next calls of <paramref name="path"/> with <paramref name="first"/> in order, then <paramref name="then"/> (200 by default).</summary>
    public void Script(string path, IEnumerable<Reply> first, Reply? then = null) =>
        _scripts[Normalize(path)] = new ReplyScript(first, then ?? Reply.Ok);

    /// <summary>Answers <paramref name="times"/> calls with <paramref name="status"/>, then 200.</summary>
    public void FailTimes(string path, int times, int status) => Script(path, Enumerable.Repeat(new Reply(status), times));

    /// <summary>Answers every call with <paramref name="status"/> until scripted otherwise.</summary>
    public void Always(string path, int status) => Script(path, [], new Reply(status));

    /// <summary>The first call waits for the returned gate, then answers 200; later calls answer 200 at once.</summary>
    public Gate Hold(string path)
    {
        var gate = new Gate();
        Script(path, [new Reply(200, Until: gate.Task)]);
        return gate;
    }

    /// <summary>Every call waits <paramref name="delay"/>, then answers 200.</summary>
    public void Delay(string path, TimeSpan delay) => Script(path, [], new Reply(200, delay));

    /// <summary>From now on every call of <paramref name="path"/> answers 200.</summary>
    public void Recover(string path) => Script(path, []);

    /// <summary>Every call of <paramref name="path"/>, in arrival order.</summary>
    public IReadOnlyList<ParticipantCall> CallsTo(string path)
    {
        var normalized = Normalize(path);
        return [.. _calls.Where(c => c.Path == normalized).OrderBy(c => c.Seq)];
    }

    /// <summary>Every call whose path starts with <paramref name="prefix"/>, in arrival order.</summary>
    public IReadOnlyList<ParticipantCall> CallsUnder(string prefix)
    {
        var normalized = Normalize(prefix);
        return [.. _calls.Where(c => c.Path.StartsWith(normalized, StringComparison.Ordinal)).OrderBy(c => c.Seq)];
    }

    /// <summary>How many distinct effects were applied through <paramref name="path"/> (one per idempotency key).</summary>
    public int EffectsOn(string path)
    {
        var normalized = Normalize(path);
        return _applied.Values.Count(v => v.Path == normalized);
    }

    /// <summary>Whether the effect of <paramref name="idempotencyKey"/> was applied.</summary>
    public bool Applied(string idempotencyKey) => _applied.ContainsKey(idempotencyKey);

    public async ValueTask DisposeAsync()
    {
        await _shutdown.CancelAsync();
        using var stopTimeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
        try
        {
            await _app.StopAsync(stopTimeout.Token);
        }
        finally
        {
            await _app.DisposeAsync();
            _shutdown.Dispose();
        }
    }

    private static string Normalize(string path) => "/" + path.TrimStart('/');

    private async Task HandleAsync(HttpContext context)
    {
        string body;
        using (var reader = new StreamReader(context.Request.Body, Encoding.UTF8))
        {
            body = await reader.ReadToEndAsync(_shutdown.Token);
        }

        var headers = context.Request.Headers;
        var call = new ParticipantCall
        {
            Seq = Interlocked.Increment(ref _seq),
            Path = context.Request.Path.Value ?? "/",
            Gid = headers["Treaty-Gid"].FirstOrDefault(),
            Branch = headers["Treaty-Branch"].FirstOrDefault(),
            Op = headers["Treaty-Op"].FirstOrDefault(),
            IdempotencyKey = headers["Idempotency-Key"].FirstOrDefault(),
            ContentType = context.Request.ContentType,
            Body = body,
        };
        _calls.Enqueue(call);

        var reply = _scripts.TryGetValue(call.Path, out var script) ? script.Next() : Reply.Ok;
        try
        {
            // Deliberately not RequestAborted: a participant finishes its work even when the caller is
            // gone (that is how an answer gets lost while the effect lands).
            if (reply.Until is { } gate)
            {
                await gate.WaitAsync(_shutdown.Token);
            }

            if (reply.Delay > TimeSpan.Zero)
            {
                await Task.Delay(reply.Delay, _shutdown.Token);
            }
        }
        catch (OperationCanceledException)
        {
            return;
        }

        string answer;
        if (reply.Status is >= 200 and < 300)
        {
            var key = call.IdempotencyKey ?? $"no-key/{call.Seq}";
            var result = JsonSerializer.Serialize(new Dictionary<string, object?>
            {
                ["applied"] = call.Path,
                ["key"] = key,
                ["seq"] = call.Seq,
            });
            // At most once per key: a repeat returns the first answer and changes nothing.
            answer = _applied.GetOrAdd(key, (call.Path, result)).Result;
        }
        else
        {
            answer = JsonSerializer.Serialize(new Dictionary<string, object?> { ["detail"] = $"scripted {reply.Status} for {call.Path}" });
        }

        call.Status = reply.Status;
        try
        {
            context.Response.StatusCode = reply.Status;
            context.Response.ContentType = "application/json";
            await context.Response.WriteAsync(answer, context.RequestAborted);
        }
        catch (Exception ex) when (ex is OperationCanceledException or IOException or InvalidOperationException)
        {
            // The caller is gone (a killed coordinator): the effect stays applied, the answer is lost.
        }
        finally
        {
            call.Complete(Interlocked.Increment(ref _seq));
        }
    }

    private sealed class ReplyScript(IEnumerable<Reply> first, Reply then)
    {
        private readonly ConcurrentQueue<Reply> _first = new(first);

        public Reply Next() => _first.TryDequeue(out var reply) ? reply : then;
    }
}
