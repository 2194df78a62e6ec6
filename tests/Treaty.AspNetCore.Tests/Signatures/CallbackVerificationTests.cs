using System.Net;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Options;
using Treaty.AspNetCore.Signatures;
using Treaty.Core.Security;

namespace Treaty.AspNetCore.Tests.Signatures;

/// <summary>The kit's callback verification over real Kestrel: what passes, what is refused, and that refused handlers never run.</summary>
public sealed class CallbackVerificationTests : IAsyncLifetime
{
    private const string Secret = "participant-secret-0123";
    private const string OtherSecret = "somebody-elses-secret-99";
    private static readonly byte[] Body = Encoding.UTF8.GetBytes("""{"gid":"g-1","branch":"pay","op":"action","attempt":1,"payload":{"amount":25.5}}""");

    private SignedParticipant _participant = null!;

    public async Task InitializeAsync() => _participant = await SignedParticipant.StartAsync(o => o.Secret = Secret);

    public async Task DisposeAsync() => await _participant.DisposeAsync();

    private static async Task<JsonElement> ReadProblemAsync(HttpResponseMessage response, string reason)
    {
        var text = await response.Content.ReadAsStringAsync();
        response.StatusCode.ShouldBe(HttpStatusCode.Unauthorized, text);
        response.Content.Headers.ContentType?.MediaType.ShouldBe("application/problem+json", text);
        response.Headers.WwwAuthenticate.ToString().ShouldBe("Treaty-Signature");
        using var document = JsonDocument.Parse(text);
        var problem = document.RootElement.Clone();
        problem.GetProperty("type").GetString().ShouldBe("https://treaty.dev/problems/invalid-signature");
        problem.GetProperty("status").GetInt32().ShouldBe(401);
        problem.GetProperty("title").GetString().ShouldBe("Invalid signature");
        problem.GetProperty("detail").GetString().ShouldNotBeNull().ShouldStartWith($"Signature {reason}");
        text.ShouldNotContain(Secret);
        text.ShouldNotContain(OtherSecret);
        return problem;
    }

    [Fact]
    public async Task Signed_Valid_Returns200AndTheHandlerReadsTheWholeBody()
    {
        // Larger than any default buffer, so a partially read or unrewound body would show.
        var payload = string.Concat(Enumerable.Range(0, 20_000).Select(i => $"item-{i};"));
        var body = Encoding.UTF8.GetBytes($$$"""{"gid":"g-big","branch":"b","op":"action","attempt":1,"payload":{"items":"{{{payload}}}"}}""");

        using var response = await _participant.PostAsync("/raw", body, _participant.Sign(Secret, body));

        response.StatusCode.ShouldBe(HttpStatusCode.OK, await response.Content.ReadAsStringAsync());
        var seen = _participant.Handled.ShouldHaveSingleItem();
        seen.Body.ShouldBe(Encoding.UTF8.GetString(body));
        using var answer = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
        answer.RootElement.GetProperty("length").GetInt32().ShouldBe(body.Length);
    }

    [Fact]
    public async Task Signed_Valid_MinimalApiBindsTheJsonBody()
    {
        using var response = await _participant.PostAsync("/bound", Body, _participant.Sign(Secret, Body));

        response.StatusCode.ShouldBe(HttpStatusCode.OK, await response.Content.ReadAsStringAsync());
        using var answer = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
        answer.RootElement.GetProperty("gid").GetString().ShouldBe("g-1");
        answer.RootElement.GetProperty("op").GetString().ShouldBe("action");
        _participant.Handled.ShouldHaveSingleItem().Body.ShouldBe("""{"amount":25.5}""");
    }

    [Theory]
    [InlineData("/raw")]
    [InlineData("/bound")]
    [InlineData("/branches/pay/action")]
    public async Task Unsigned_Returns401MissingAndTheHandlerDoesNotRun(string path)
    {
        using var response = await _participant.PostAsync(path, Body, signature: null);

        await ReadProblemAsync(response, "missing");
        _participant.Handled.ShouldBeEmpty();
    }

    [Theory]
    [InlineData("garbage")]
    [InlineData("t=soon,v1=00")]
    [InlineData("v1=0011")]
    public async Task MalformedHeader_Returns401Malformed(string header)
    {
        using var response = await _participant.PostAsync("/raw", Body, header);

        await ReadProblemAsync(response, "malformed");
        _participant.Handled.ShouldBeEmpty();
    }

    [Fact]
    public async Task WrongSecret_Returns401MismatchWithoutEchoingAnySecret()
    {
        using var response = await _participant.PostAsync("/raw", Body, _participant.Sign(OtherSecret, Body));

        await ReadProblemAsync(response, "mismatch");
        _participant.Handled.ShouldBeEmpty();
    }

    [Fact]
    public async Task BodyTamperedAfterSigning_Returns401Mismatch()
    {
        var signature = _participant.Sign(Secret, Body);
        var tampered = Encoding.UTF8.GetBytes(Encoding.UTF8.GetString(Body).Replace("25.5", "2550", StringComparison.Ordinal));

        using var response = await _participant.PostAsync("/bound", tampered, signature);

        await ReadProblemAsync(response, "mismatch");
        _participant.Handled.ShouldBeEmpty();
    }

    [Theory]
    [InlineData(-301)]
    [InlineData(301)]
    public async Task OlderOrNewerThanFiveMinutesByTheParticipantsClock_Returns401Expired(int skewSeconds)
    {
        using var response = await _participant.PostAsync("/raw", Body, _participant.Sign(Secret, Body, TimeSpan.FromSeconds(skewSeconds)));

        await ReadProblemAsync(response, "expired");
        _participant.Handled.ShouldBeEmpty();
    }

    [Fact]
    public async Task SignedFiveMinutesAgo_IsStillAccepted_AndOneSecondLaterIsNot()
    {
        var signature = _participant.Sign(Secret, Body);
        _participant.Clock.Advance(CallbackSignature.Tolerance);

        using (var response = await _participant.PostAsync("/raw", Body, signature))
        {
            response.StatusCode.ShouldBe(HttpStatusCode.OK);
        }

        _participant.Clock.Advance(TimeSpan.FromSeconds(1));
        using (var response = await _participant.PostAsync("/raw", Body, signature))
        {
            await ReadProblemAsync(response, "expired");
        }

        _participant.HandledOn("/raw").ShouldBe(1);
    }

    [Fact]
    public async Task Group_EveryEndpointOfTheGroupRequiresTheSignature()
    {
        using (var signed = await _participant.PostAsync("/branches/pay/action", Body, _participant.Sign(Secret, Body)))
        {
            signed.StatusCode.ShouldBe(HttpStatusCode.OK);
        }

        using (var unsigned = await _participant.PostAsync("/branches/pay/compensate", Body, signature: null))
        {
            await ReadProblemAsync(unsigned, "missing");
        }

        _participant.Handled.Select(c => c.Path).ShouldBe(["/branches/pay/action"]);
    }

    [Fact]
    public async Task EndpointWithoutRequirement_PassesUnsignedEvenWithASecret()
    {
        using var response = await _participant.PostAsync("/open", Body, signature: null);

        response.StatusCode.ShouldBe(HttpStatusCode.OK);
        _participant.Handled.ShouldHaveSingleItem().Body.ShouldBe(Encoding.UTF8.GetString(Body));
    }
}

/// <summary>Configurations other than one secret: none, rotation, invalid ones, a missing registration.</summary>
public sealed class CallbackVerificationConfigurationTests
{
    private static readonly byte[] Body = Encoding.UTF8.GetBytes("""{"gid":"g-2","branch":"stock","op":"action","attempt":1,"payload":{}}""");

    [Fact]
    public async Task NoSecretConfigured_MarkedEndpointsPassThrough()
    {
        await using var participant = await SignedParticipant.StartAsync(_ => { });

        using (var raw = await participant.PostAsync("/raw", Body, signature: null))
        {
            raw.StatusCode.ShouldBe(HttpStatusCode.OK);
        }

        using (var group = await participant.PostAsync("/branches/stock/action", Body, "not even a signature"))
        {
            group.StatusCode.ShouldBe(HttpStatusCode.OK);
        }

        participant.Handled.Count.ShouldBe(2);
        participant.Handled.ShouldAllBe(c => c.Body == Encoding.UTF8.GetString(Body));
    }

    [Fact]
    public async Task Rotation_EveryAcceptedSecretVerifies_ARetiredOneDoesNot()
    {
        const string current = "the-new-secret-2026";
        const string previous = "the-old-secret-2025";
        const string retired = "the-retired-secret-2024";
        await using var participant = await SignedParticipant.StartAsync(o =>
        {
            o.Secrets.Add(current);
            o.Secrets.Add(previous);
        });

        using (var withCurrent = await participant.PostAsync("/raw", Body, participant.Sign(current, Body)))
        {
            withCurrent.StatusCode.ShouldBe(HttpStatusCode.OK);
        }

        using (var withPrevious = await participant.PostAsync("/raw", Body, participant.Sign(previous, Body)))
        {
            withPrevious.StatusCode.ShouldBe(HttpStatusCode.OK);
        }

        using (var withRetired = await participant.PostAsync("/raw", Body, participant.Sign(retired, Body)))
        {
            withRetired.StatusCode.ShouldBe(HttpStatusCode.Unauthorized);
            (await withRetired.Content.ReadAsStringAsync()).ShouldContain("mismatch");
        }

        participant.HandledOn("/raw").ShouldBe(2);
    }

    [Fact]
    public void Options_SecretReplacesTheList_SecretsKeepsOrder()
    {
        var options = new TreatyCallbackVerificationOptions();
        options.Secrets.Add("first-secret-0000001");
        options.Secrets.Add("second-secret-000002");
        options.Secret.ShouldBe("first-secret-0000001");

        options.Secret = "only-secret-00000003";
        options.Secrets.ShouldBe(["only-secret-00000003"]);

        options.Secret = null;
        options.Secrets.ShouldBeEmpty();
    }

    [Theory]
    [InlineData("too-short")]
    [InlineData("                    ")]
    public async Task InvalidSecret_FailsAtStartWithoutNamingTheSecret(string secret)
    {
        var error = await Should.ThrowAsync<OptionsValidationException>(async () =>
        {
            await using var participant = await SignedParticipant.StartAsync(o =>
            {
                o.Secrets.Add("a-perfectly-fine-secret");
                o.Secrets.Add(secret);
            });
        });

        error.Message.ShouldContain("#2 must be at least 16 characters");
        if (!string.IsNullOrWhiteSpace(secret))
        {
            error.Message.ShouldNotContain(secret);
        }
    }

    [Fact]
    public void Use_WithoutAdd_ThrowsAndSaysWhatToCall()
    {
        var app = WebApplication.CreateSlimBuilder().Build();

        var error = Should.Throw<InvalidOperationException>(() => app.UseTreatyCallbackVerification());

        error.Message.ShouldContain("AddTreatyCallbackVerification");
    }
}
