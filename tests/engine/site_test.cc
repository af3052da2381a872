#include "daemon/engine/site.h"

#include "gtest/gtest.h"

namespace tprd::engine {
namespace {

TEST(SiteTest, FormNamesRoundTrip) {
  for (Form form :
       {Form::kMovEaxFromMoffs, Form::kMovMoffsFromEax, Form::kMovRegFromMem, Form::kMovMemFromReg,
        Form::kMovMemFromImm, Form::kPushMem, Form::kAndMemZero}) {
    auto back = FormFromName(FormName(form));
    ASSERT_TRUE(back.has_value()) << FormName(form);
    EXPECT_EQ(*back, form);
  }
  EXPECT_FALSE(FormFromName("cmp_mem").has_value());
}

TEST(SiteTest, WritersAreTheThreeStoreFormsAndAndZero) {
  EXPECT_EQ(FormName(Form::kAndMemZero), "and_mem_zero");
  EXPECT_EQ(static_cast<int>(Form::kAndMemZero), 7) << "stored in the guest's site table";
  EXPECT_TRUE(FormWritesTpr(Form::kAndMemZero));
  EXPECT_TRUE(FormWritesTpr(Form::kMovMoffsFromEax));
  EXPECT_TRUE(FormWritesTpr(Form::kMovMemFromReg));
  EXPECT_TRUE(FormWritesTpr(Form::kMovMemFromImm));
  EXPECT_FALSE(FormWritesTpr(Form::kMovEaxFromMoffs));
  EXPECT_FALSE(FormWritesTpr(Form::kMovRegFromMem));
  EXPECT_FALSE(FormWritesTpr(Form::kPushMem));
}

TEST(SiteTest, RegisterNamesAreLowerCase) {
  EXPECT_EQ(GprName(Gpr::kEax), "eax");
  EXPECT_EQ(GprName(Gpr::kEdi), "edi");
}

}  // namespace
}  // namespace tprd::engine
