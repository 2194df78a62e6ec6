using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using FsCheck;
using FsCheck.Fluent;
using Treaty.Core.Security;

namespace Treaty.Core.Tests.Security;

/// <summary>The pure <c>Treaty-Signature</c> algorithm: format, round trip, tampering, the 5-minute window, parsing.</summary>
public sealed class CallbackSignatureTests
{
    private static readonly byte[] Secret = Encoding.UTF8.GetBytes("s3cret-s3cret-s3cret");
    private static readonly byte[] OtherSecret = Encoding.UTF8.GetBytes("another-secret-of-16+");
    private static readonly byte[] Body = Encoding.UTF8.GetBytes("""{"gid":"g-1","branch":"pay","op":"action","attempt":1,"payload":{"amount":25.5}}""");
    private static readonly DateTimeOffset Now = new(2026, 3, 1, 12, 0, 0, TimeSpan.Zero);

    private static string Hex(byte[] secret, string t, byte[] body) =>
        Convert.ToHexStringLower(HMACSHA256.HashData(secret, (byte[])[.. Encoding.ASCII.GetBytes(t + "."), .. body]));

    [Fact]
    public void Sign_ProducesTimestampAndLowercaseHexHmacOfTimestampDotBody()
    {
        var header = CallbackSignature.Sign(Secret, Body, Now);

        var t = Now.ToUnixTimeSeconds().ToString(CultureInfo.InvariantCulture);
        header.ShouldBe($"t={t},v1={Hex(Secret, t, Body)}");
        header.ShouldMatch("^t=[0-9]+,v1=[0-9a-f]{64}$");
    }

    [Fact]
    public void Sign_DropsSubSecondPrecision()
    {
        CallbackSignature.Sign(Secret, Body, Now.AddMilliseconds(999)).ShouldBe(CallbackSignature.Sign(Secret, Body, Now));
    }

    [Fact]
    public void Verify_RoundTrip_IsValid()
    {
        var header = CallbackSignature.Sign(Secret, Body, Now);

        CallbackSignature.Verify(Secret, header, Body, Now).ShouldBe(SignatureCheck.Valid);
    }

    [Fact]
    public void Verify_EmptyBody_RoundTripIsValid()
    {
        var header = CallbackSignature.Sign(Secret, [], Now);

        CallbackSignature.Verify(Secret, header, [], Now).ShouldBe(SignatureCheck.Valid);
        CallbackSignature.Verify(Secret, header, "{}"u8, Now).ShouldBe(SignatureCheck.Mismatch);
    }

    [Fact]
    public void Verify_WrongSecret_IsMismatch()
    {
        var header = CallbackSignature.Sign(OtherSecret, Body, Now);

        CallbackSignature.Verify(Secret, header, Body, Now).ShouldBe(SignatureCheck.Mismatch);
    }

    [Fact]
    public void Verify_TamperedBody_IsMismatch()
    {
        var header = CallbackSignature.Sign(Secret, Body, Now);
        var tampered = Encoding.UTF8.GetBytes(Encoding.UTF8.GetString(Body).Replace("25.5", "2550", StringComparison.Ordinal));

        CallbackSignature.Verify(Secret, header, tampered, Now).ShouldBe(SignatureCheck.Mismatch);
    }

    [Fact]
    public void Verify_TimestampRewrittenWithinTheWindow_IsMismatch()
    {
        // Replaying a captured signature with a fresher t must not work: t is part of the MAC.
        var header = CallbackSignature.Sign(Secret, Body, Now.AddMinutes(-4));
        var v1 = header[(header.IndexOf(",v1=", StringComparison.Ordinal) + 4)..];
        var rewritten = $"t={Now.ToUnixTimeSeconds()},v1={v1}";

        CallbackSignature.Verify(Secret, rewritten, Body, Now).ShouldBe(SignatureCheck.Mismatch);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(299)]
    [InlineData(300)]
    [InlineData(-299)]
    [InlineData(-300)]
    public void Verify_WithinFiveMinutesEitherWay_IsValid(int ageSeconds)
    {
        var header = CallbackSignature.Sign(Secret, Body, Now.AddSeconds(-ageSeconds));

        CallbackSignature.Verify(Secret, header, Body, Now).ShouldBe(SignatureCheck.Valid);
    }

    [Theory]
    [InlineData(301)]
    [InlineData(3600)]
    [InlineData(-301)]
    [InlineData(-3600)]
    public void Verify_OlderOrNewerThanFiveMinutes_IsExpired(int ageSeconds)
    {
        var header = CallbackSignature.Sign(Secret, Body, Now.AddSeconds(-ageSeconds));

        CallbackSignature.Verify(Secret, header, Body, Now).ShouldBe(SignatureCheck.Expired);
    }

    [Fact]
    public void Verify_ExpiredWithWrongSecret_IsExpired_TheWindowIsCheckedBeforeTheMac()
    {
        var header = CallbackSignature.Sign(OtherSecret, Body, Now.AddMinutes(-10));

        CallbackSignature.Verify(Secret, header, Body, Now).ShouldBe(SignatureCheck.Expired);
    }

    [Fact]
    public void Verify_ToleranceIsFiveMinutes()
    {
        CallbackSignature.Tolerance.ShouldBe(TimeSpan.FromMinutes(5));
        CallbackSignature.HeaderName.ShouldBe("Treaty-Signature");
    }

    [Theory]
    [InlineData(null)]
    [InlineData("")]
    public void Verify_NoHeader_IsMissing(string? header)
    {
        CallbackSignature.Verify(Secret, header, Body, Now).ShouldBe(SignatureCheck.Missing);
    }

    [Theory]
    [InlineData("garbage")]
    [InlineData(",")]
    [InlineData("t=1772366400")]
    [InlineData("v1=00ff")]
    [InlineData("t=,v1=00ff")]
    [InlineData("t=abc,v1=00ff")]
    [InlineData("t=-1,v1=00ff")]
    [InlineData("t=+1772366400,v1=00ff")]
    [InlineData("t=1772366400.5,v1=00ff")]
    [InlineData("t=99999999999999999999999,v1=00ff")]
    [InlineData("T=1772366400,V1=00ff")]
    [InlineData("t=1772366400;v1=00ff")]
    public void Verify_MalformedHeader_IsMalformed(string header)
    {
        CallbackSignature.Verify(Secret, header, Body, Now).ShouldBe(SignatureCheck.Malformed);
    }

    [Fact]
    public void Verify_TimestampFarInTheFuture_IsExpiredNotAnOverflow()
    {
        CallbackSignature.Verify(Secret, "t=9999999999999,v1=00ff", Body, Now).ShouldBe(SignatureCheck.Expired);
    }

    [Fact]
    public void Verify_NonHexSignature_IsMismatch()
    {
        var t = Now.ToUnixTimeSeconds();

        CallbackSignature.Verify(Secret, $"t={t},v1=not-hex", Body, Now).ShouldBe(SignatureCheck.Mismatch);
        CallbackSignature.Verify(Secret, $"t={t},v1=", Body, Now).ShouldBe(SignatureCheck.Mismatch);
    }

    [Fact]
    public void Verify_TruncatedSignature_IsMismatch()
    {
        var header = CallbackSignature.Sign(Secret, Body, Now);

        CallbackSignature.Verify(Secret, header[..^2], Body, Now).ShouldBe(SignatureCheck.Mismatch);
    }

    [Fact]
    public void Verify_UppercaseHex_IsValid()
    {
        var t = Now.ToUnixTimeSeconds().ToString(CultureInfo.InvariantCulture);

        CallbackSignature.Verify(Secret, $"t={t},v1={Hex(Secret, t, Body).ToUpperInvariant()}", Body, Now).ShouldBe(SignatureCheck.Valid);
    }

    [Fact]
    public void Verify_SeveralV1Values_IsValidWhenAnyMatches()
    {
        // A signer in the middle of a rotation may sign with the old and the new secret.
        var t = Now.ToUnixTimeSeconds().ToString(CultureInfo.InvariantCulture);
        var header = $"t={t},v1=zz-not-hex,v1={Hex(OtherSecret, t, Body)},v1={Hex(Secret, t, Body)}";

        CallbackSignature.Verify(Secret, header, Body, Now).ShouldBe(SignatureCheck.Valid);
        CallbackSignature.Verify(OtherSecret, header, Body, Now).ShouldBe(SignatureCheck.Valid);
        CallbackSignature.Verify(Encoding.UTF8.GetBytes("a-third-secret-here"), header, Body, Now).ShouldBe(SignatureCheck.Mismatch);
    }

    [Fact]
    public void Verify_SpacesAroundPartsAndUnknownSchemes_AreTolerated()
    {
        var t = Now.ToUnixTimeSeconds().ToString(CultureInfo.InvariantCulture);
        var header = $" t={t} , v0=deadbeef , v1={Hex(Secret, t, Body)} ";

        CallbackSignature.Verify(Secret, header, Body, Now).ShouldBe(SignatureCheck.Valid);
    }

    [Fact]
    public void Verify_AnySecretAndBody_RoundTripsAndAnyFlippedByteIsAMismatch()
    {
        var cases = Config.QuickThrowOnFailure.WithMaxTest(200);
        Check.One(cases, Prop.ForAll(
            ArbMap.Default.ArbFor<NonEmptyArray<byte>>(),
            ArbMap.Default.ArbFor<byte[]>(),
            ArbMap.Default.ArbFor<int>(),
            (secret, body, position) =>
            {
                body ??= [];
                var header = CallbackSignature.Sign(secret.Get, body, Now);
                if (CallbackSignature.Verify(secret.Get, header, body, Now) != SignatureCheck.Valid)
                {
                    return Prop.Label(false, "round trip");
                }

                if (body.Length == 0)
                {
                    return Prop.Label(true, "empty body");
                }

                var flipped = (byte[])body.Clone();
                flipped[(int)((uint)position % (uint)body.Length)] ^= 0x01;
                return Prop.Label(CallbackSignature.Verify(secret.Get, header, flipped, Now) == SignatureCheck.Mismatch, "flipped byte");
            }));
    }
}
