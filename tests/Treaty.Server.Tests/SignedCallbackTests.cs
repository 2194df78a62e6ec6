using System.Collections.Concurrent;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Treaty.Cli;
using Treaty.Core.Security;
using Treaty.Server.Tests.Support;

namespace Treaty.Server.Tests;

/// <summary>
/// The coordinator's side of signed callbacks: with <c>CallbackSecret</c> every branch call carries a
/// <c>Treaty-Signature</c> over the exact bytes sent. The participant here checks with the Core
/// algorithm (this project does not reference the participant kit; the kit's end-to-end tests live in
/// Treaty.AspNetCore.Tests/Signatures).
/// </summary>
public sealed class SignedCallbackTests
{
    private const string Secret = "coordinator-secret-0001";
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(20);

    [Fact]
    public async Task Signed_EveryCallCarriesAValidSignatureOverTheExactBody_AndTheSagaCommits()
    {
        await using var participant = await VerifyingParticipant.StartAsync(Secret);
        await using var coordinator = await InProcessCoordinator.StartAsync(configureOptions: o => o.CallbackSecret = Secret);
        var gid = Api.NewGid("signed");

        var view = await coordinator.Client.Saga(gid).WithPayload(Api.Payload)
            .Step("pay", participant.Url($"{gid}/pay/action"), participant.Url($"{gid}/pay/compensate"))
            .Step("ship", participant.Url($"{gid}/ship/action"), participant.Url($"{gid}/ship/compensate"))
            .SubmitAsync(wait: Wait);

        view.Status.ShouldBe("committed", view.Reason);
        participant.Calls.Count.ShouldBe(2);
        participant.Calls.ShouldAllBe(c => c.Check == SignatureCheck.Valid);
        participant.Calls.ShouldAllBe(c => c.Signature!.StartsWith("t=", StringComparison.Ordinal));
        participant.Calls.ShouldAllBe(c => !c.Signature!.Contains(Secret));
    }

    [Fact]
    public async Task Signed_EachRetryIsSignedAfresh_OverItsOwnBody()
    {
        await using var participant = await VerifyingParticipant.StartAsync(Secret, failFirst: 1);
        await using var coordinator = await InProcessCoordinator.StartAsync(configureOptions: o => o.CallbackSecret = Secret);
        var gid = Api.NewGid("resigned");

        var view = await coordinator.Client.Saga(gid).WithPayload(Api.Payload)
            .Step("pay", participant.Url($"{gid}/pay/action"), participant.Url($"{gid}/pay/compensate"))
            .WithRetry(3, TimeSpan.FromMilliseconds(10), TimeSpan.FromMilliseconds(50))
            .SubmitAsync(wait: Wait);

        view.Status.ShouldBe("committed", view.Reason);
        var calls = participant.Calls.ToArray();
        calls.Length.ShouldBe(2);
        calls.ShouldAllBe(c => c.Check == SignatureCheck.Valid);
        calls[0].Body.ShouldNotBe(calls[1].Body); // the attempt number is part of the envelope
        calls[0].Signature.ShouldNotBe(calls[1].Signature);
    }

    [Fact]
    public async Task Unsigned_WithoutASecret_NoSignatureHeaderIsSent()
    {
        await using var participant = await VerifyingParticipant.StartAsync(Secret, enforce: false);
        await using var coordinator = await InProcessCoordinator.StartAsync();
        var gid = Api.NewGid("plain");

        var view = await coordinator.Client.Saga(gid).WithPayload(Api.Payload)
            .Step("pay", participant.Url($"{gid}/pay/action"), participant.Url($"{gid}/pay/compensate"))
            .SubmitAsync(wait: Wait);

        view.Status.ShouldBe("committed", view.Reason);
        var call = participant.Calls.ShouldHaveSingleItem();
        call.Signature.ShouldBeNull();
        call.Check.ShouldBe(SignatureCheck.Missing);
    }

    [Fact]
    public async Task Signed_ParticipantWithAnotherSecret_Answers401_WhichAbortsTheSagaAtOnce()
    {
        await using var participant = await VerifyingParticipant.StartAsync("participant-other-secret");
        await using var coordinator = await InProcessCoordinator.StartAsync(configureOptions: o => o.CallbackSecret = Secret);
        var gid = Api.NewGid("badsecret");

        var view = await coordinator.Client.Saga(gid).WithPayload(Api.Payload)
            .Step("pay", participant.Url($"{gid}/pay/action"), participant.Url($"{gid}/pay/compensate"))
            .SubmitAsync(wait: Wait);

        // A misconfigured secret aborts sagas, it does not retry them: the contract makes 401 a
        // definitive 4xx, and a participant that refused the signature applied nothing.
        view.Status.ShouldBe("aborted");
        view.Op("pay", "action").LastStatusCode.ShouldBe(401);
        view.Op("pay", "action").Attempts.ShouldBe(1);
        view.Op("pay", "compensate").Attempts.ShouldBe(0);
        participant.Calls.ShouldHaveSingleItem().Check.ShouldBe(SignatureCheck.Mismatch);
    }

    [Theory]
    [InlineData("short")]
    [InlineData("                ")]
    public void Options_ShortOrBlankSecret_IsRejectedWithoutNamingIt(string secret)
    {
        var options = new TreatyServerOptions { CallbackSecret = secret };

        var error = Should.Throw<ArgumentException>(options.Validate);

        error.Message.ShouldContain("CallbackSecret must be at least 16 characters");
        if (!string.IsNullOrWhiteSpace(secret))
        {
            error.Message.ShouldNotContain(secret);
        }
    }

    [Fact]
    public void Options_NoSecretOrALongEnoughOne_IsValid()
    {
        new TreatyServerOptions { CallbackSecret = null }.Validate();
        new TreatyServerOptions { CallbackSecret = "exactly-16-chars" }.Validate();
    }

    [Theory]
    [InlineData("from-the-flag-000001", "from-the-env-0000001", "from-the-flag-000001")]
    [InlineData(null, "from-the-env-0000001", "from-the-env-0000001")]
    [InlineData("", "from-the-env-0000001", "from-the-env-0000001")]
    [InlineData(null, "", null)]
    [InlineData(null, null, null)]
    public void Serve_CallbackSecret_FlagWinsOverTheEnvironment(string? flag, string? environment, string? expected)
    {
        ServeCommand.CallbackSecretVariable.ShouldBe("TREATY_CALLBACK_SECRET");
        ServeCommand.ResolveCallbackSecret(flag, environment).ShouldBe(expected);
    }

    private sealed record SignedCall(string Path, string Body, string? Signature, SignatureCheck Check);

    /// <summary>A participant on Kestrel that checks every call's signature with the Core algorithm and answers 401 when it fails.</summary>
    private sealed class VerifyingParticipant : IAsyncDisposable
    {
        private readonly WebApplication _app;
        private int _failFirst;

        private VerifyingParticipant(WebApplication app, int failFirst)
        {
            _app = app;
            _failFirst = failFirst;
        }

        public ConcurrentQueue<SignedCall> Calls { get; } = new();

        private Uri BaseAddress { get; set; } = null!;

        public static async Task<VerifyingParticipant> StartAsync(string secret, bool enforce = true, int failFirst = 0)
        {
            var builder = WebApplication.CreateSlimBuilder();
            builder.WebHost.UseUrls("http://127.0.0.1:0");
            builder.Logging.SetMinimumLevel(LogLevel.Warning);
            var app = builder.Build();
            var participant = new VerifyingParticipant(app, failFirst);
            var key = Encoding.UTF8.GetBytes(secret);
            app.Run(async context =>
            {
                using var buffer = new MemoryStream();
                await context.Request.Body.CopyToAsync(buffer, context.RequestAborted);
                var body = buffer.ToArray();
                var signature = context.Request.Headers[CallbackSignature.HeaderName].FirstOrDefault();
                var check = CallbackSignature.Verify(key, signature, body, TimeProvider.System.GetUtcNow());
                participant.Calls.Enqueue(new SignedCall(context.Request.Path.Value ?? "/", Encoding.UTF8.GetString(body), signature, check));
                if (enforce && check != SignatureCheck.Valid)
                {
                    context.Response.StatusCode = StatusCodes.Status401Unauthorized;
                    return;
                }

                context.Response.StatusCode = Interlocked.Decrement(ref participant._failFirst) >= 0 ? StatusCodes.Status503ServiceUnavailable : StatusCodes.Status200OK;
            });
            await app.StartAsync();
            participant.BaseAddress = new Uri(app.Urls.Single());
            return participant;
        }

        public string Url(string path) => new Uri(BaseAddress, path).AbsoluteUri;

        public async ValueTask DisposeAsync()
        {
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
}
