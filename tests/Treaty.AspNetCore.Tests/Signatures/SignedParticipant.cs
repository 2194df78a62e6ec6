using System.Collections.Concurrent;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Treaty.AspNetCore.Signatures;
using Treaty.Core.Security;

namespace Treaty.AspNetCore.Tests.Signatures;

/// <summary>What a handler saw: which endpoint ran and the body it read.</summary>
public sealed record HandledCall(string Path, string Body);

/// <summary>The branch envelope as a minimal API binds it.</summary>
public sealed record Envelope(string Gid, string Branch, string Op, JsonElement Payload);

/// <summary>
/// A participant on real Kestrel (127.0.0.1, port 0) with the kit's callback verification and a
/// manual clock: raw and JSON-bound endpoints that require a signature, a group that requires
/// one, and an endpoint that does not. Every handler records the body it read.
/// </summary>
public sealed class SignedParticipant : IAsyncDisposable
{
    private readonly WebApplication _app;

    private SignedParticipant(WebApplication app, ManualTimeProvider clock)
    {
        _app = app;
        Clock = clock;
    }

    public ManualTimeProvider Clock { get; }

    public HttpClient Http { get; private set; } = null!;

    public ConcurrentQueue<HandledCall> Handled { get; } = new();

    public static async Task<SignedParticipant> StartAsync(Action<TreatyCallbackVerificationOptions> configure, ManualTimeProvider? clock = null)
    {
        clock ??= new ManualTimeProvider(new DateTimeOffset(2026, 3, 1, 12, 0, 0, TimeSpan.Zero));
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        builder.Services.AddSingleton<TimeProvider>(clock);
        builder.Services.AddTreatyCallbackVerification(configure);
        var app = builder.Build();
        var participant = new SignedParticipant(app, clock);

        app.UseTreatyCallbackVerification();
        app.MapPost("/raw", async context =>
        {
            using var reader = new StreamReader(context.Request.Body, Encoding.UTF8);
            var body = await reader.ReadToEndAsync(context.RequestAborted);
            participant.Handled.Enqueue(new HandledCall("/raw", body));
            context.Response.ContentType = "application/json";
            await context.Response.WriteAsync(JsonSerializer.Serialize(new Dictionary<string, int> { ["length"] = Encoding.UTF8.GetByteCount(body) }), context.RequestAborted);
        }).RequireTreatySignature();
        app.MapPost("/bound", (Envelope envelope) =>
        {
            participant.Handled.Enqueue(new HandledCall("/bound", envelope.Payload.GetRawText()));
            return Results.Ok(new Dictionary<string, string> { ["gid"] = envelope.Gid, ["op"] = envelope.Op });
        }).RequireTreatySignature();
        var branches = app.MapGroup("/branches").RequireTreatySignature();
        branches.MapPost("/{name}/{op}", async (string name, string op, HttpRequest request) =>
        {
            using var reader = new StreamReader(request.Body, Encoding.UTF8);
            var body = await reader.ReadToEndAsync(request.HttpContext.RequestAborted);
            participant.Handled.Enqueue(new HandledCall($"/branches/{name}/{op}", body));
            return Results.Ok(new Dictionary<string, string> { ["applied"] = $"{name}/{op}" });
        });
        app.MapPost("/open", async context =>
        {
            using var reader = new StreamReader(context.Request.Body, Encoding.UTF8);
            participant.Handled.Enqueue(new HandledCall("/open", await reader.ReadToEndAsync(context.RequestAborted)));
        });

        try
        {
            await app.StartAsync();
        }
        catch
        {
            await app.DisposeAsync();
            throw;
        }

        participant.Http = new HttpClient { BaseAddress = new Uri(app.Urls.Single()), Timeout = TimeSpan.FromSeconds(30) };
        return participant;
    }

    /// <summary>The absolute URL of <paramref name="path"/> on this participant.</summary>
    public string Url(string path) => new Uri(Http.BaseAddress!, path).AbsoluteUri;

    /// <summary>POSTs <paramref name="body"/> with <paramref name="signature"/> as the Treaty-Signature header (none when null).</summary>
    public async Task<HttpResponseMessage> PostAsync(string path, byte[] body, string? signature)
    {
        using var content = new ByteArrayContent(body);
        content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = content };
        if (signature is not null)
        {
            request.Headers.TryAddWithoutValidation(CallbackSignature.HeaderName, signature);
        }

        return await Http.SendAsync(request);
    }

    /// <summary>Signs with <paramref name="secret"/> at the participant's clock plus <paramref name="skew"/>.</summary>
    public string Sign(string secret, byte[] body, TimeSpan skew = default) =>
        CallbackSignature.Sign(Encoding.UTF8.GetBytes(secret), body, Clock.GetUtcNow() + skew);

    public int HandledOn(string path) => Handled.Count(c => c.Path == path);

    public async ValueTask DisposeAsync()
    {
        Http?.Dispose();
        using var stopTimeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
        try
        {
            await _app.StopAsync(stopTimeout.Token);
        }
        finally
        {
            await _app.DisposeAsync();
        }
    }
}
